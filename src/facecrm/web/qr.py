"""A QR code as SVG, in a module of its own: `facecrm stores qr` draws one without
importing the web app (FastAPI, the face pipeline) that the console's copy lives beside."""

from __future__ import annotations

import io

import qrcode
import qrcode.image.svg


def qr_svg(url: str) -> bytes:
    """The QR code of `url` as SVG (for the console, the CLI and a printed poster)."""
    image = qrcode.make(url, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=4)
    buffer = io.BytesIO()
    image.save(buffer)
    return buffer.getvalue()
