"""One home per value: the pydantic defaults of absld/params are the paper's configuration.

conf/config.yaml is the home of the paper's values; ``Params()`` must be exactly what DVC composes
from it for the ``paper`` profile, so that a value left out of params.yaml still means the paper's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from absld.params import Params, flatten, parse_params
from tests.conftest import REPO


def composed_paper(tmp_path: Path) -> dict:
    """The params.yaml that DVC composes from conf/ for the paper profile, validated and dumped."""
    from dvc.utils.hydra import compose_and_dump

    path = tmp_path / "params.yaml"
    compose_and_dump(path, str(REPO / "conf"), None, "config", str(REPO), ["profile=paper"])
    return parse_params(yaml.safe_load(path.read_text()), str(path)).model_dump(mode="json")


def differences(left: dict, right: dict, names: tuple[str, str] = ("default", "paper")) -> list[str]:
    """Every flattened key whose value differs, with both values."""
    flat_left, flat_right = flatten(left), flatten(right)
    missing = "<missing>"
    return [f"{key}: {names[0]} {flat_left.get(key, missing)!r} != {names[1]} {flat_right.get(key, missing)!r}"
            for key in sorted(set(flat_left) | set(flat_right))
            if flat_left.get(key, missing) != flat_right.get(key, missing)]


def test_every_default_is_the_papers_value(tmp_path):
    diff = differences(Params().model_dump(mode="json"), composed_paper(tmp_path))
    assert not diff, ("absld/params defaults differ from conf/config.yaml (paper profile):\n  "
                      + "\n  ".join(diff))


def test_empty_params_are_the_defaults():
    diff = differences(parse_params({}).model_dump(mode="json"), Params().model_dump(mode="json"),
                       ("parse_params({})", "Params()"))
    assert not diff, "parse_params({}) differs from Params():\n  " + "\n  ".join(diff)
    assert parse_params({}) == Params()
