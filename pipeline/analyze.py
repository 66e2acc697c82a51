"""``absld analyze``: work in progress."""

from __future__ import annotations

import click

from .common import params_option, user_errors


@click.command()
@params_option
@user_errors
def analyze(params_path: str) -> None:
    """Not implemented yet."""
    raise click.ClickException("absld analyze is not implemented yet")
