"""facecrm: opt-in face recognition for retail customer service.

>>> import facecrm
>>> crm = facecrm.open(data_dir="~/facecrm")  # doctest: +SKIP
>>> crm.enroll("Ada", ["ada.jpg"], consent=True)  # doctest: +SKIP
>>> crm.identify("frame.jpg")  # doctest: +SKIP

See `facecrm.facade` (the local API) and `facecrm.client` (the REST API's client).
Importing `facecrm` loads nothing else: the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from facecrm.facade import Box, Customer, Face, LocalCRM, Verification, open

_LAZY = {"Box", "Customer", "Face", "LocalCRM", "Verification", "open"}

__all__ = ["Box", "Customer", "Face", "LocalCRM", "Verification", "__version__", "open"]


def __getattr__(name: str) -> Any:
    """`facecrm.open` and the result types, imported when first used (no models on import)."""
    if name in _LAZY:
        from facecrm import facade

        return getattr(facade, name)
    if name == "client":  # `import facecrm; facecrm.client.Client(...)`
        import importlib

        return importlib.import_module("facecrm.client")
    raise AttributeError(f"module 'facecrm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "client"])
