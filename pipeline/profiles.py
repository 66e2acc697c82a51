"""Turn a profile (an override file over params.yaml) into `dvc exp run -S` arguments.

    python -m pipeline.profiles profiles/quick.yaml     # prints one `key=value` per line

The profile is validated against params.yaml first (merged, through the same pydantic models as
every stage), so a typo in a profile fails here, before DVC starts anything.
"""

from __future__ import annotations

import sys

import click
import yaml

from absld.config import ConfigError, flatten, load_params, read_yaml


def render(value: object) -> str:
    """A value in the YAML flow syntax that `dvc exp run -S` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").strip()


def overrides(profile: str, params: str = "params.yaml") -> list[str]:
    load_params(params, profile)  # validate the merged configuration
    return [f"{key}={render(value)}" for key, value in flatten(read_yaml(profile)).items()]


@click.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option("--params", default="params.yaml", show_default=True)
def main(profile: str, params: str) -> None:
    """Print the -S overrides of PROFILE, one per line."""
    try:
        for line in overrides(profile, params):
            click.echo(line)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
