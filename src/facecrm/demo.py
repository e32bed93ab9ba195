"""`facecrm demo`: the product in one minute, on photos that ship with the install.

Runs in a temporary data directory, so it never touches real customer data.
See `demo_data/NOTICE.md` for the photos and their (public-domain) sources.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from rich.console import Console

from facecrm.config import Settings, configure, load
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Identification, Photo
from facecrm.vision.image import read_image
from facecrm.vision.types import Image


class DemoFailed(RuntimeError):
    """The walkthrough did not behave as it should (a real defect, not a demo effect)."""


def hopper(settings: Settings | None = None) -> Image:
    """Grace Hopper's portrait, shipped with matplotlib (decoded within `settings`' limits,
    by default the environment's)."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return read_image(path, settings or load())


def collins(settings: Settings | None = None) -> Image:
    """Eileen Collins's portrait (NASA, public domain), shipped with facecrm."""
    path = Path(str(resources.files("facecrm") / "demo_data" / "eileen_collins_nasa.jpg"))
    return read_image(path, settings or load())


def another_day(image: Image) -> Image:
    """A different shot of the same person: mirrored, reframed, tilted and darker."""
    mirrored = np.ascontiguousarray(image[20:-10, 15:-20][:, ::-1])
    h, w = mirrored.shape[:2]
    tilt = cv2.getRotationMatrix2D((w / 2, h / 2), 6, 1.0)
    tilted = cv2.warpAffine(mirrored, tilt, (w, h), borderMode=cv2.BORDER_REFLECT)
    darker: npt.NDArray[np.float32] = np.asarray(tilted, np.float32) * np.float32(0.8)
    return np.clip(darker, 0, 255).astype(np.uint8)


def side_by_side(left: Image, right: Image) -> Image:
    """Two photos in one frame, as a store camera would see two people."""
    height = max(left.shape[0], right.shape[0])
    pad = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in (left, right)]
    return np.ascontiguousarray(np.concatenate(pad, axis=1))


def _describe(results: list[Identification]) -> str:
    return (
        ", ".join(
            f"[green]{r.customer_name}[/] (similarity {r.match.similarity:.3f})"
            if r.match
            else "[yellow]unknown[/]"
            for r in results
        )
        or "no face"
    )


def run(console: Console) -> None:
    """Enroll, recognise, leave a stranger unknown, erase; raise `DemoFailed` on a defect."""
    with tempfile.TemporaryDirectory(prefix="facecrm-demo-") as data_dir:
        settings = configure(data_dir=Path(data_dir))
        console.print(f"[bold]facecrm demo[/] — temporary data directory {data_dir}")
        crm = FaceCRM(settings, migrate=True)

        console.print("\n1. Grace Hopper opts in at the kiosk and enrolls one photo.")
        grace = crm.enroll(
            "Grace Hopper", [Photo("kiosk", hopper(settings))], CURRENT, "kiosk", SYSTEM
        )
        console.print(
            f"   customer {grace.id}: consent 'in_store_recognition' recorded, "
            f"{len(grace.templates)} template stored."
        )
        console.print(
            f"   operating threshold {crm.threshold:.3f} "
            f"(target false-match rate {settings.target_fmr:g})."
        )

        console.print("\n2. Another day, a store camera sees her.")
        seen = crm.identify(another_day(hopper(settings)), SYSTEM)
        console.print(f"   → {_describe(seen)}")
        if [r.match.customer_id for r in seen if r.match] != [grace.id]:
            raise DemoFailed("Grace Hopper was not recognised")

        console.print("\n3. Eileen Collins walks in; she never opted in.")
        stranger = crm.identify(collins(settings), SYSTEM)
        console.print(f"   → {_describe(stranger)} — nothing about her is stored, only counted.")
        if any(r.match for r in stranger) or not stranger:
            raise DemoFailed("a stranger was given a name")

        console.print("\n4. Both in one frame.")
        both = crm.identify(side_by_side(another_day(hopper(settings)), collins(settings)), SYSTEM)
        console.print(f"   → {_describe(both)}")
        if sorted(r.customer_name or "unknown" for r in both) != ["Grace Hopper", "unknown"]:
            raise DemoFailed("the group photo was not resolved to one customer and one unknown")

        console.print("\n5. Grace asks to be forgotten.")
        crm.delete_customer(grace.id, SYSTEM)
        after = crm.identify(another_day(hopper(settings)), SYSTEM)
        console.print(f"   → erased; the camera now sees: {_describe(after)}")
        if any(r.match for r in after):
            raise DemoFailed("an erased customer was still recognised")

        console.print(
            "\n[bold green]Demo complete.[/] Next: `facecrm enroll NAME PHOTO...`, "
            "`facecrm identify PHOTO`, `facecrm eval DIR`."
        )
        crm.close()
