"""The public Python API: `facecrm.open()` and the handful of calls a script needs.

Everything here acts as the `SYSTEM` principal, i.e. as a local operator with the
database and the keys on this machine (like the `facecrm` CLI): no log-in, every
operation still audited. Servers, staff and devices go through the REST API instead
(see `facecrm.client`).

Photos may be given as a path (`str` or `Path`), the encoded file's `bytes`, or a
decoded RGB `uint8` numpy array of shape (height, width, 3).

>>> import tempfile
>>> import facecrm
>>> from facecrm import demo
>>> crm = facecrm.open(data_dir=tempfile.mkdtemp())
>>> ada = crm.enroll("Grace Hopper", [demo.hopper()], consent=True)
>>> ada.name, ada.templates
('Grace Hopper', 1)
>>> [face.name for face in crm.identify(demo.another_day(demo.hopper()))]
['Grace Hopper']
>>> crm.erase(ada.id)
>>> [face.name for face in crm.identify(demo.another_day(demo.hopper()))]
[None]
>>> crm.close()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from facecrm.errors import ConsentError, InvalidError

if TYPE_CHECKING:
    from facecrm.config import Settings
    from facecrm.crm.service import FaceCRM, Photo
    from facecrm.vision.pipeline import FacePipeline

PhotoLike: TypeAlias = "str | Path | bytes | bytearray | np.ndarray"
CHANNEL = "api"  # how the consent reached us, as recorded with it

__all__ = ["Box", "Customer", "Face", "LocalCRM", "PhotoLike", "Verification", "open"]


@dataclass(frozen=True, slots=True)
class Box:
    """A face's box in the photo, in pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Face:
    """One face of an identified photo: an enrolled customer, or unknown (all None).

    Nothing but the box is said about an unknown face: its best similarity would
    describe someone who never opted in.
    """

    box: Box
    customer_id: str | None
    name: str | None
    similarity: float | None

    @property
    def known(self) -> bool:
        return self.customer_id is not None


@dataclass(frozen=True, slots=True)
class Customer:
    """An enrolled customer and how many face templates (of the current model) they have."""

    id: str
    name: str
    templates: int


@dataclass(frozen=True, slots=True)
class Verification:
    """A 1:1 check: is the photo's largest face this customer?"""

    match: bool
    similarity: float | None  # None: no face in the photo
    threshold: float


def open(  # `facecrm.open(...)`: the name a user guesses (shadows the builtin here only)
    data_dir: str | Path | None = None,
    database_url: str | None = None,
    *,
    pipeline: FacePipeline | None = None,
    **settings: object,
) -> LocalCRM:
    """Open the customer database in `data_dir` or at `database_url`, creating or upgrading it.

    Further keyword arguments are settings (`facecrm.config.Settings`, e.g.
    `target_fmr=1e-4`); anything not given comes from `FACECRM_*` variables. They
    become the process-wide settings, as for the CLI. `pipeline` shares an already
    loaded face pipeline; by default the models load on the first photo.

    >>> import tempfile, facecrm
    >>> with facecrm.open(data_dir=tempfile.mkdtemp()) as crm:
    ...     crm.customers()
    []
    """
    from facecrm.config import configure
    from facecrm.crm.service import FaceCRM

    overrides = dict(settings)
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    if database_url is not None:
        overrides["database_url"] = database_url
    # the library's own data dir: open() creates it, so it also migrates it (`facecrm migrate`)
    return LocalCRM(FaceCRM(configure(**overrides), pipeline=pipeline, migrate=True))


class LocalCRM:
    """Customers' faces in a local database, as the `SYSTEM` principal (see the module)."""

    def __init__(self, service: FaceCRM) -> None:
        self.service = service  # the full service, for what this surface leaves out

    @property
    def threshold(self) -> float:
        """The first model's similarity every named face reaches (with the cascade, a name
        also needs the second model's agreement and a clear lead over other customers)."""
        return self.service.first_threshold

    @property
    def consent_text(self) -> str:
        """The consent text a person must have agreed to before `enroll(..., consent=True)`
        (the chain's current English text)."""
        from facecrm.crm import consent_text
        from facecrm.crm.models import Purpose

        with self.service.sessions() as session:
            text = consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, "en")
            return text.body if text is not None else ""

    def enroll(self, name: str, photos: Iterable[PhotoLike], *, consent: bool = False) -> Customer:
        """A new customer with one template per photo, or nothing at all.

        `consent=True` confirms that the person agreed to `consent_text` (the current
        shipped version, which is recorded); without it `ConsentError` is raised and
        nothing is stored. All photos must be one person with a usable face, not
        already enrolled (`facecrm.errors.FacecrmError` subclasses say what is wrong).

        >>> import tempfile, facecrm
        >>> from facecrm import demo
        >>> crm = facecrm.open(data_dir=tempfile.mkdtemp())
        >>> crm.enroll("Grace Hopper", [demo.hopper()])
        Traceback (most recent call last):
        ...
        facecrm.errors.ConsentError: enrolling needs consent=True: ...
        >>> crm.enroll("Grace Hopper", [demo.hopper()], consent=True).templates
        1
        >>> crm.close()
        """
        from facecrm.crm.authz import SYSTEM
        from facecrm.crm.consent_text import CURRENT

        if consent is not True:
            raise ConsentError(
                "enrolling needs consent=True: the person agreed to the consent text "
                f"version {CURRENT} (see .consent_text); nothing was stored"
            )
        loaded = [_photo(p, self.service.settings) for p in photos]
        customer = self.service.enroll(name, loaded, CURRENT, CHANNEL, SYSTEM)
        return Customer(customer.id, customer.name, len(loaded))

    def identify(self, photo: PhotoLike) -> list[Face]:
        """Every face in the photo, largest first: a customer with similarity, or unknown.

        >>> import tempfile, facecrm
        >>> from facecrm import demo
        >>> crm = facecrm.open(data_dir=tempfile.mkdtemp())
        >>> grace = crm.enroll("Grace Hopper", [demo.hopper()], consent=True)
        >>> photo = demo.side_by_side(demo.another_day(demo.hopper()), demo.collins())
        >>> sorted(str(face.name) for face in crm.identify(photo))
        ['Grace Hopper', 'None']
        >>> crm.identify(b"not a photo")
        Traceback (most recent call last):
        ...
        facecrm.vision.image.ImageError: ...
        >>> crm.close()
        """
        from facecrm.crm.authz import SYSTEM

        results = self.service.identify(_photo(photo, self.service.settings).image, SYSTEM)
        faces = []
        for r in results:
            box = Box(**r.face.box.as_dict())
            if r.match is None:
                faces.append(Face(box, None, None, None))
            else:
                similarity = round(float(r.match.similarity), 4)
                faces.append(Face(box, r.match.customer_id, r.customer_name, similarity))
        return faces

    def verify(self, customer_id: str, photo: PhotoLike) -> Verification:
        """Is the photo's largest face this customer? (1:1 against all their templates)

        >>> import tempfile, facecrm
        >>> from facecrm import demo
        >>> crm = facecrm.open(data_dir=tempfile.mkdtemp())
        >>> grace = crm.enroll("Grace Hopper", [demo.hopper()], consent=True)
        >>> crm.verify(grace.id, demo.another_day(demo.hopper())).match
        True
        >>> crm.verify(grace.id, demo.collins()).match
        False
        >>> crm.close()
        """
        from facecrm.crm.authz import SYSTEM

        result = self.service.verify(
            customer_id, _photo(photo, self.service.settings).image, SYSTEM
        )
        return Verification(result.match, result.similarity, result.threshold)

    def customers(self) -> list[Customer]:
        """Every customer, by name, with their number of templates (audited)."""
        from facecrm.crm.authz import SYSTEM

        return [Customer(c.id, c.name, n) for c, n in self.service.customers(SYSTEM)]

    def erase(self, customer_id: str) -> None:
        """Erase the customer: profile, consents, templates and history (`NotFoundError`)."""
        from facecrm.crm.authz import SYSTEM

        self.service.delete_customer(customer_id, SYSTEM)

    def close(self) -> None:
        """Release the database connections."""
        self.service.close()

    def __enter__(self) -> LocalCRM:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _photo(photo: PhotoLike, settings: Settings) -> Photo:
    """A decoded photo from a path, encoded bytes or an RGB uint8 array."""
    from facecrm.crm.service import Photo
    from facecrm.vision.image import decode_image, read_image

    if isinstance(photo, str | Path):
        return Photo(Path(photo).name, read_image(photo, settings))
    if isinstance(photo, bytes | bytearray | memoryview):
        return Photo("bytes", decode_image(bytes(photo), settings))
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise InvalidError(
                f"an array photo must be RGB uint8 of shape (height, width, 3), "
                f"not {photo.dtype} {photo.shape}"
            )
        return Photo("array", np.ascontiguousarray(photo))
    raise InvalidError(f"a photo is a path, bytes or a numpy array, not {type(photo).__name__}")
