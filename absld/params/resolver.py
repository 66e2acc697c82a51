"""The resolver that validates a composition before `dvc exp run -S ...` writes params.yaml.

DVC composes params.yaml from conf/ with Hydra and then, before any stage runs, checks out the
outputs the new dvc.yaml names: with a bad matrix value (``seeds=[-1]``, ``seeds=0``,
``distill.methods=[absld,absld]``) DVC could remove student checkpoints it had itself linked earlier
(``dvc exp apply``/``dvc checkout``), or fail on dvc.yaml with an error of its own, before the
``check`` stage could say anything. Every profile's ``profile:`` key is ``${absld_checked:NAME}``:
when OmegaConf resolves the composition, :func:`checked` validates the whole of it with the project's
own rules (:func:`absld.params.parse_params`, the ``check`` stage's) and, on a bad value, stops the
process with one line naming the value, before params.yaml or any output is touched.

DVC registers it by importing the project's Hydra plugins (``hydra_plugins/absld_params``, found at
the project's root, DVC's ``hydra.plugins_path``) before composing;
:func:`absld.params.compose_profile` registers it itself.
"""

from __future__ import annotations

from typing import Any

RESOLVER = "absld_checked"


class ParamsRejected(SystemExit):
    """The composition is not valid params: stops `dvc exp run` with one line (a SystemExit, so that
    neither OmegaConf nor DVC turns it into a traceback); :func:`absld.params.compose_profile` turns
    it back into a ConfigError."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ERROR: {message}. Nothing was written: params.yaml and every output are as they "
                         "were; fix the -S value and run again.")
        self.message = message


def checked(profile: str, *, _root_: Any) -> str:
    """The profile's name, once the whole composed config (``_root_``) is valid params."""
    from omegaconf import OmegaConf

    from . import ConfigError, parse_params

    raw = OmegaConf.to_container(_root_, resolve=False)
    if not isinstance(raw, dict) or "hydra" in raw:  # Hydra reading its own node midway: not the result yet
        return profile
    raw["profile"] = profile  # the one interpolation: this call
    try:
        parse_params(raw, source=f"dvc exp run (profile {profile})")
    except ConfigError as err:
        raise ParamsRejected(str(err)) from None
    return profile


def register() -> None:
    """Make ``${absld_checked:NAME}`` resolvable (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, checked, replace=True)
