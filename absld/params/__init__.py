"""Typed configuration: ``params.yaml`` parsed once into pydantic models.

Every tunable number of the pipeline lives in ``params.yaml``; this module is the only place that
reads it. Validation is strict: an unknown key, a wrong type or an out-of-range value is a
:class:`ConfigError` whose one-line message names the key, the value and what is allowed.

Perturbation sizes (``eps``, ``step``) are written as fractions of 255 (``8/255``) and parsed
here; a bare float such as ``0.031`` is rejected with a hint, because it is the most common way
AutoAttack numbers stop matching the literature.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from typing import Annotated

from ..vocab import CLEAN_TEACHER_METHODS

from .common import CONF, ConfigError, Device, KLReduction, NonNegInt, Num, Pixels, PosInt, Prob, Radius, Section, Selection, TeacherMethod, TeacherSource, TemperatureMode, _distinct, flatten, fraction_of_255  # noqa: F401
from .runtime import RuntimeConfig  # noqa: F401
from .data import AugmentConfig, DataConfig, SyntheticConfig  # noqa: F401
from .training import AttackConfig, EvalAttackConfig, ModelConfig, TrainConfig, TrainOverride  # noqa: F401
from .methods import AbsldConfig, AdaadConfig, ArdConfig, BMtardConfig, CfaConfig, DafaConfig, DistillWeights, FairArdConfig, FairIadConfig, FairRsladConfig, FrlConfig, FrlRwConfig, FrlRwrmConfig, IadConfig, MethodConfig, ReweightedRsladConfig, RiskRuleConfig, RsladConfig, SatConfig, TradesConfig, TrixConfig, WatConfig  # noqa: F401
from .distill import DistillConfig, SelectEvalConfig  # noqa: F401
from .teacher import CleanTeacherConfig, TeacherConfig  # noqa: F401
from .evaluate import AutoAttackConfig, CwEvalConfig, EvalAttack, EvaluateConfig, FgsmConfig, PgdEvalConfig  # noqa: F401
from .analyze import AnalyzeConfig  # noqa: F401


class Params(Section):
    """The whole of params.yaml."""

    profile: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "paper"
    """Which configuration this is (``paper``, or the profile that overrode it): shown by ``dvc exp
    show``, named by the report, and the default W&B group (``absld-<profile>``)."""
    seeds: Annotated[list[NonNegInt], AfterValidator(lambda v: _distinct(v, "seeds"))] = Field(default_factory=lambda: [0])
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    teacher_clean: CleanTeacherConfig = Field(default_factory=CleanTeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)

    @model_validator(mode="after")
    def _validation_split_for_methods_that_measure(self) -> "Params":
        needing = [name for name in self.distill.methods if self.distill.method_config(name).validates]
        if needing and self.data.val_per_class == 0:
            raise ValueError(f"distill methods {', '.join(needing)} measure the student on the validation split "
                             "after every epoch, but data.val_per_class is 0; set it > 0 (the official FRL code "
                             "holds out 300 images per class, CFA's 2%)")
        return self

    @model_validator(mode="after")
    def _clean_teacher_for_methods_that_need_one(self) -> "Params":
        needing = [name for name in self.distill.methods if name in CLEAN_TEACHER_METHODS]
        if needing and self.teacher_clean.source == "none":
            raise ValueError(f"distill.methods holds {', '.join(needing)}, which distils from a clean teacher too, but "
                             "teacher_clean.source is none; set teacher_clean.source to train (plain training with "
                             "teacher_clean.train) or file (teacher_clean.path or .url with teacher_clean.sha256), "
                             f"or remove {', '.join(needing)} from distill.methods")
        return self


MOVED_TO_ENVIRONMENT = {
    "study": "the W&B group comes from WANDB_RUN_GROUP (default absld-<profile>); name the configuration with `profile`",
    "wandb": "W&B reads WANDB_PROJECT (default absld-repro), WANDB_ENTITY and WANDB_TAGS (comma-separated)",
    "runtime.progress": "progress bars are on unless TQDM_DISABLE=1",
    "runtime.num_threads": "torch's CPU threads come from OMP_NUM_THREADS",
}
"""Settings that cannot change a result live in the environment, not in params.yaml, so that changing
them leaves every DVC stage (and the `check` stage that reads the whole file) up to date."""


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        moved = next((why for key, why in MOVED_TO_ENVIRONMENT.items()
                      if loc == key or loc.startswith(key + ".")), None)
        if moved:
            return f"{source}: '{loc}' is not a params.yaml key: {moved}"
        return f"{source}: unknown key '{loc}'; check its spelling against params.yaml"
    if first["type"] == "literal_error":
        return f"{source}: {loc} = {first['input']!r} is not allowed; {msg[0].lower()}{msg[1:]}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}{shown}: {msg}{more}"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path), str(path))


def profile_names(conf: Path = CONF) -> list[str]:
    """The profiles there are (conf/profile/*.yaml)."""
    return sorted(p.stem for p in (conf / "profile").glob("*.yaml"))


def compose_profile(profile: str, path: str | Path, *, overrides: tuple[str, ...] = (), conf: Path = CONF) -> None:
    """Write the params.yaml of ``profile`` (conf/config.yaml with conf/profile/<profile>.yaml, plus Hydra
    ``overrides``) to ``path`` with DVC's own composition, so the bytes are those `dvc exp run` writes."""
    if not (conf / "profile").is_dir():
        raise ConfigError(f"no profiles here ({conf / 'profile'} is not a directory): run from the project's directory")
    if profile not in profile_names(conf):
        raise ConfigError(f"profile {profile!r} is not one of {', '.join(profile_names(conf))} (conf/profile/*.yaml)")
    from dvc.utils.hydra import compose_and_dump

    from .resolver import ParamsRejected, register

    register()  # what DVC's process gets from hydra_plugins/absld_params
    try:
        compose_and_dump(Path(path), str(Path(conf).resolve()), None, "config", str(Path(conf).resolve().parent),
                         [f"profile={profile}", *overrides])
    except ParamsRejected as stop:  # the composition is not valid params
        raise ConfigError(stop.message) from None


def load_profile(profile: str, *, conf: Path = CONF) -> Params:
    """The validated params of a profile, composed in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        compose_profile(profile, path, conf=conf)
        return load_params(path)
