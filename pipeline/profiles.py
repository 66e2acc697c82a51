"""Profiles: conf/config.yaml (the paper, documented) composed with one conf/profile/<name>.yaml.

DVC composes params.yaml this way on every `dvc exp run` (its Hydra composition, enabled in
.dvc/config): `dvc exp run -S profile=quick`. This module does the same composition outside DVC:

    python -m pipeline.profiles fashion              # print the params.yaml that profile gives
    python -m pipeline.profiles paper --write        # rewrite params.yaml (the committed one is `paper`)

It writes with DVC's own function, so the bytes are those `dvc exp run` would write.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from absld.config import ConfigError, Params, load_params

CONF = Path("conf")


def names(conf: Path = CONF) -> list[str]:
    """The profiles there are (conf/profile/*.yaml)."""
    return sorted(p.stem for p in (conf / "profile").glob("*.yaml"))


def compose(profile: str, path: Path, *, overrides: tuple[str, ...] = (), conf: Path = CONF) -> None:
    """Write the params.yaml of ``profile`` (plus Hydra ``overrides``) to ``path``, as DVC does."""
    if not (conf / "profile").is_dir():
        raise ConfigError(f"no profiles here ({conf / 'profile'} is not a directory): run from the project's directory")
    if profile not in names(conf):
        raise ConfigError(f"profile {profile!r} is not one of {', '.join(names(conf))} (conf/profile/*.yaml)")
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(Path(path), str(Path(conf).resolve()), None, "config", str(Path(conf).resolve().parent),
                     [f"profile={profile}", *overrides])


def load(profile: str, *, conf: Path = CONF) -> Params:
    """The validated params of a profile."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        compose(profile, path, conf=conf)
        return load_params(path)


@click.command()
@click.argument("profile")
@click.option("--write", is_flag=True, help="Write params.yaml instead of printing it.")
def main(profile: str, write: bool) -> None:
    """Print (or --write) the params.yaml that PROFILE composes to, validated."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "params.yaml"
            compose(profile, path)
            load_params(path)
            text = path.read_text()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if write:
        Path("params.yaml").write_text(text)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":
    sys.exit(main())
