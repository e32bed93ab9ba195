"""facecrm: opt-in face recognition for retail customer service."""

__version__ = "0.1.0"
