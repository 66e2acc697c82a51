"""``absld evaluate``: work in progress."""

from __future__ import annotations

import click

from .common import params_option, user_errors


@click.command()
@params_option
@user_errors
def evaluate(params_path: str) -> None:
    """Not implemented yet."""
    raise click.ClickException("absld evaluate is not implemented yet")
