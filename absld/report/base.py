"""The report package's error type."""

from __future__ import annotations

from ..errors import UserError


class ReportError(UserError, ValueError):
    """Records or inputs that cannot be analysed together; the message says how to fix it."""
