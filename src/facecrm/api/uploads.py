"""Reading uploaded photos within the size limit."""

from __future__ import annotations

from fastapi import UploadFile

from facecrm.api.problems import ApiError
from facecrm.config import Settings
from facecrm.vision.image import decode_image, decode_slot
from facecrm.vision.types import Image


def read_image_upload(upload: UploadFile, settings: Settings) -> Image:
    """Decode an uploaded photo (413 when too large, 422 when not a usable image).

    The body is read into memory only once a decode slot is free (503 `busy` otherwise):
    waiting uploads stay in Starlette's spooled temporary files.
    """
    with decode_slot(settings):
        data = upload.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"the photo is larger than {settings.max_upload_bytes} bytes")
        return decode_image(data, settings)
