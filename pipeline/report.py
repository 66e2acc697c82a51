"""``absld report``: work in progress."""

from __future__ import annotations

import click

from .common import params_option, user_errors


@click.command()
@params_option
@user_errors
def report(params_path: str) -> None:
    """Not implemented yet."""
    raise click.ClickException("absld report is not implemented yet")
