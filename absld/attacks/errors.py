"""The one error type of :mod:`absld.attacks`.

Raised for a parameter outside its allowed values (naming the value, what is allowed and how to fix
it) and for a missing optional backend (naming the package and the pip command that installs it).
The pipeline turns it into a one-line message for the user.
"""

from __future__ import annotations
from ..errors import UserError

__all__ = ["AttackError"]


class AttackError(UserError, ValueError):
    """An attack was asked for something it cannot do; the message says how to fix it."""
