"""What every part of absld.data shares: the manifest's name, the layout version, the error type."""

from __future__ import annotations

from ..errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DataError(UserError, RuntimeError):
    """The data cannot be found, read or trusted; the message says how to fix it."""
