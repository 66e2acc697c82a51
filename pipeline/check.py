"""``absld check``: the DVC stage that every other stage follows.

It depends on the whole of params.yaml, so that any edit — also of a key no stage tracks, such as a
typo next to a real key — makes DVC run it first; a bad file stops `dvc repro`/`dvc exp run` there,
before DVC deletes the outputs of any stage that tracks the edited values. Its one output never
changes with the params (a stage downstream reruns only for the params it tracks itself).
"""

from __future__ import annotations

import click

from absld.io import write_text

from .common import LAYOUT, load, params_option, user_errors

CHECKED_TEXT = "params.yaml is valid (absld check)\n"


@click.command()
@params_option
@user_errors
def check(params_path: str) -> None:
    """Validate the whole params file (and the W&B mode) before any stage runs.

    Unknown keys, wrong types and values out of range stop here with one line naming the key, the
    value and what is allowed. On success writes results/params-checked.txt, whose text never
    changes, so no stage downstream reruns because of it.
    """
    load(params_path)
    if not LAYOUT.checked.is_file() or LAYOUT.checked.read_text() != CHECKED_TEXT:
        write_text(LAYOUT.checked, CHECKED_TEXT)
    click.echo(f"{params_path}: valid")
