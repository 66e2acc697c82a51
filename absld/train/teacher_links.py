"""The owner of models/teacher_clean_of/<method>.txt: what each method distils from besides the robust
teacher. The teacher-clean stage writes one line per method, the distill stage reads its method's.

DVC gives every item of the ``distill`` matrix the same dependencies, so the items cannot depend on
models/teacher_clean.pt for B-MTARD alone (no nested interpolation such as ``${deps[${item.method}]}``
in DVC 3.67). Each item depends on its method's line instead: the clean teacher's sha256 for a method
that uses one, a constant line for every other, so a new clean teacher reruns only the students that
distil from it. The distill stage checks the checkpoint it loads against the recorded sha256.
"""

from __future__ import annotations

import re

from ..io import write_text
from ..layout import Layout
from ..methods import METHODS


def write_links(layout: Layout, digest: str | None) -> None:
    """One line per method: ``<sha256>  teacher_clean.pt`` for a method that distils from the clean
    teacher (when there is one: ``digest``), a constant line otherwise."""
    for method, cls in METHODS.items():
        if not cls.uses_clean_teacher:
            text = f"none: {method} distils from no clean teacher\n"
        elif digest is None:
            text = "none: teacher_clean.source is none\n"
        else:
            text = f"{digest}  {layout.teacher_clean_checkpoint.name}\n"
        write_text(layout.teacher_clean_of(method), text)


def recorded_digest(layout: Layout, method: str) -> str | None:
    """The clean teacher's sha256 recorded for ``method`` (None: none recorded, or no file)."""
    path = layout.teacher_clean_of(method)
    words = path.read_text().split() if path.is_file() else []
    return words[0] if words and re.fullmatch(r"[0-9a-f]{64}", words[0]) else None
