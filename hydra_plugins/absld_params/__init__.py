"""Validate params before `dvc exp run -S ...` writes params.yaml (a Hydra plugin DVC loads).

DVC composes params.yaml from conf/ with Hydra and then, before any stage runs, checks out the
outputs the new dvc.yaml names: with a bad matrix value (``seeds=[-1]``, ``seeds=0``,
``distill.methods=[absld,absld]``) DVC can remove student checkpoints it had itself linked earlier
(``dvc exp apply``/``dvc checkout``), or fail on dvc.yaml with an error of its own, before the
``check`` stage could say anything. DVC imports every module of the ``hydra_plugins`` package
found at the project's root (its ``hydra.plugins_path``) before composing; this one registers the
resolver ``absld_checked``, which each profile's ``profile:`` key calls with the profile's name. When
OmegaConf resolves the composition it validates the whole of it with the project's own rules
(:func:`absld.params.parse_params`, the ``check`` stage's) and, on a bad value, stops the process
with one line naming the value, before params.yaml or any output is touched.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

RESOLVER = "absld_checked"


class ParamsRejected(SystemExit):
    """The composition is not valid params: stops `dvc exp run` with one line (a SystemExit, so that
    neither OmegaConf nor DVC wraps it into a traceback); :func:`absld.params.compose_profile`
    turns it back into a ConfigError."""


def checked(profile: str, *, _root_: Any) -> str:
    """The profile's name, once the whole composed config (``_root_``) is valid params."""
    from absld.params import ConfigError, parse_params

    raw = OmegaConf.to_container(_root_, resolve=False)
    if "hydra" in raw:  # Hydra reading its own node midway through composing: not the result yet
        return profile
    raw["profile"] = profile  # the one interpolation: this call
    try:
        parse_params(raw, source=f"dvc exp run (profile {profile})")
    except ConfigError as err:
        raise ParamsRejected(f"ERROR: {err}. Nothing was written: params.yaml and every output are as "
                             "they were; fix the -S value and run again.") from None
    return profile


OmegaConf.register_new_resolver(RESOLVER, checked, replace=True)
