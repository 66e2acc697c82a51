"""``absld profiles NAME [--write]``: the params.yaml that a profile composes to, validated."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from absld.params import compose_profile, load_params

from .common import user_errors


@click.command()
@click.argument("profile")
@click.option("--write", is_flag=True, help="Write params.yaml instead of printing it.")
@user_errors
def profiles(profile: str, write: bool) -> None:
    """Print (or --write to params.yaml) the params.yaml that PROFILE composes to: conf/config.yaml
    (the paper) with conf/profile/PROFILE.yaml, composed with DVC's own function, so the bytes are
    those `dvc exp run -S profile=PROFILE` writes. The file is validated first."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        compose_profile(profile, path)
        load_params(path)
        text = path.read_text()
    if write:
        Path("params.yaml").write_text(text)
    else:
        click.echo(text, nl=False)
