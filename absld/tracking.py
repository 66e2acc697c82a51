"""Experiment tracking: one W&B run per stage, plus the files DVC reads (metrics and plots).

W&B's mode comes from the ``WANDB_MODE`` environment variable (``offline`` when unset, so nothing
leaves the machine unless the user asks for ``online``; the tests set ``disabled``, in which case
wandb is not even imported). Runs are grouped by study (``group``), typed by stage
(``job_type``) and named after the DVC experiment (``DVC_EXP_NAME``) when there is one.

Where and under which names runs are logged cannot change a result, so it is not in params.yaml
(a change there would make DVC rerun stages): W&B's own environment variables say it —
``WANDB_PROJECT`` (default ``absld-repro``), ``WANDB_ENTITY``, ``WANDB_TAGS`` (comma-separated) and
``WANDB_RUN_GROUP`` (default ``absld-<profile>``, the study).
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .params import AnalyzeConfig, Params
from .distributed import is_main
from .errors import UserError
from .io import short_hash


WANDB_MODES = ("online", "offline", "disabled", "dryrun")
"""The values of WANDB_MODE that W&B accepts (dryrun = offline)."""


DEFAULT_PROJECT = "absld-repro"


@dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None
    group: str
    tags: tuple[str, ...]


def wandb_settings(profile: str) -> WandbSettings:
    """Project, entity, group (the study) and tags from W&B's environment variables."""
    env = os.environ
    tags = tuple(t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip())
    return WandbSettings(
        project=env.get("WANDB_PROJECT", "").strip() or DEFAULT_PROJECT,
        entity=env.get("WANDB_ENTITY", "").strip() or None,
        group=env.get("WANDB_RUN_GROUP", "").strip() or f"absld-{profile}",
        tags=tags,
    )


def wandb_dir(cwd: Path | None = None) -> str | None:
    """Where W&B writes its ``wandb/`` folder: ``WANDB_DIR`` when set; inside a DVC temporary
    workspace (``dvc exp run --temp``/``--queue`` run in ``<repo>/.dvc/tmp/exps/...``, deleted
    afterwards) the repository itself, so that offline runs survive for ``wandb sync``; otherwise
    None (W&B's default: the working directory)."""
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"]
    parts = (cwd or Path.cwd()).resolve().parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return str(Path(*parts[:i]))
    return None


ARTIFACT_MODES = ("reference", "file", "off")


def artifact_mode() -> str:
    """How models and data go to W&B as artifacts: ``ABSLD_WANDB_ARTIFACTS`` = ``reference``
    (default: a checksummed file:// reference, nothing uploaded), ``file`` (uploaded) or ``off``."""
    mode = os.environ.get("ABSLD_WANDB_ARTIFACTS", "").strip().lower() or "reference"
    if mode not in ARTIFACT_MODES:
        raise TrackingError(f"ABSLD_WANDB_ARTIFACTS={mode!r} is not one of {', '.join(ARTIFACT_MODES)}")
    return mode


class TrackingError(UserError, ValueError):
    """W&B cannot run as asked (unknown WANDB_MODE, online without credentials); said before any work."""


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return mode or "offline"


def wandb_credentials_available() -> bool:
    """Whether a W&B API key can be found without the network: ``WANDB_API_KEY`` (or an identity
    token file), else a ``~/.netrc`` (or ``$NETRC``) entry for the W&B host (``wandb login`` writes it)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def class_key(name: str) -> str:
    """A class name as a W&B key part: "/" would open a W&B section ("T-shirt/top" -> "T-shirt-top")."""
    return name.replace("/", "-")


CLASSES_SHOWN: int = AnalyzeConfig.model_fields["classes_shown"].default
"""``analyze.classes_shown``'s default: more than twice this many classes is "many" in W&B too."""

BAND_SUFFIX = "_classes"
"""With many classes a per-class prefix ``p`` also gets ``p_classes/min``, ``/median`` and ``/max``."""


def name_classes(row: dict[str, Any], class_names: list[str], classes_shown: int = CLASSES_SHOWN) -> dict[str, Any]:
    """W&B keys of per-class values named by class: ``tau_adv/3`` -> ``tau_adv/Dress`` (a "/" inside
    a class name, as in "T-shirt/top", becomes "-" so that it does not open a W&B section).

    With more than ``2 * classes_shown`` classes (CIFAR-100: one panel per class would bury the
    workspace) every class is still logged, and each per-class prefix also gets its band over the
    classes, ``<prefix>_classes/min``, ``/median`` and ``/max``, in a section of its own: three
    curves that stay readable (the W&B report plots them with the worst and best classes)."""
    out: dict[str, Any] = {}
    per_class: dict[str, list[float]] = {}
    for key, value in row.items():
        prefix, _, index = key.rpartition("/")
        if prefix and index.isdigit() and int(index) < len(class_names):
            key = f"{prefix}/{class_key(class_names[int(index)])}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                per_class.setdefault(prefix, []).append(float(value))
        out[key] = value
    if len(class_names) > 2 * classes_shown:
        for prefix, values in per_class.items():
            ordered = sorted(v for v in values if v == v)  # NaN left out
            if not ordered:
                continue
            middle = len(ordered) // 2
            median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
            out.update({f"{prefix}{BAND_SUFFIX}/min": ordered[0], f"{prefix}{BAND_SUFFIX}/median": median,
                        f"{prefix}{BAND_SUFFIX}/max": ordered[-1]})
    return out


def check_tracking() -> None:
    """Stop a stage before it does any work when W&B could not log it as WANDB_MODE asks."""
    mode = wandb_mode()
    if mode not in WANDB_MODES:
        raise TrackingError(f"WANDB_MODE={os.environ.get('WANDB_MODE')!r} is not a W&B mode; use one of "
                            f"{', '.join(WANDB_MODES)} (unset: offline)")
    artifact_mode()
    if mode == "online" and not wandb_credentials_available():
        raise TrackingError("WANDB_MODE=online but no W&B API key was found: run `wandb login` or set "
                            "WANDB_API_KEY (or use WANDB_MODE=offline and `wandb sync` later)")


EPOCH_STAGES = ("teacher", "distill")
"""Stages that log one row per epoch (``define_metric``: epoch is their x-axis)."""


def artifact_name(model_id: str) -> str:
    """W&B artifact names allow no "/": ``absld/seed0`` -> ``absld-seed0``."""
    return model_id.replace("/", "-")


class Tracker:
    """A W&B run (or nothing, when disabled) with a small, stable API for the stages."""

    def __init__(self, params: Params, stage: str, *, name: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.stage = stage
        self.mode = wandb_mode()
        self.run = None
        if not is_main():  # torchrun's other processes: rank 0 logs
            self.mode = "disabled"
        if self.mode == "disabled":
            return
        os.environ["WANDB_MODE"] = self.mode  # wandb reads the environment, not only mode=
        os.environ.setdefault("WANDB_SILENT", "true")
        directory = wandb_dir()
        if directory is not None:
            os.environ["WANDB_DIR"] = directory
        import wandb

        exp = os.environ.get("DVC_EXP_NAME")
        run_name = "-".join(p for p in (exp, name or stage) if p)
        where = wandb_settings(params.profile)
        config = {**(config if config is not None else params.model_dump(mode="json")), "dvc_experiment": exp}
        self.run = wandb.init(
            project=where.project,
            entity=where.entity,
            group=where.group,
            job_type=stage,
            name=run_name,
            # the same stage with the same settings (a killed one started again) resumes its run
            id=short_hash(where.project, where.entity, where.group, exp, run_name, config),
            resume="allow",
            tags=list(where.tags),
            config=config,
            reinit="finish_previous",
        )
        if stage in EPOCH_STAGES:  # curves against the epoch, also across a resumed run
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")

    def log(self, metrics: dict[str, Any]) -> None:
        """Log one row (W&B's own step counts rows; training rows carry their ``epoch``)."""
        if self.run is not None:
            self.run.log(metrics)

    def _artifact(self, name: str, kind: str, paths: list[Path], metadata: dict[str, Any] | None = None) -> Any:
        import wandb

        artifact = wandb.Artifact(name, type=kind, metadata=metadata or {})
        for path in map(Path, paths):
            if artifact_mode() == "file":
                artifact.add_file(str(path), name=path.name)
            else:  # a checksummed reference: nothing is uploaded
                artifact.add_reference(path.resolve().as_uri(), name=path.name)
        return artifact

    def use_artifact(self, name: str, kind: str, paths: list[Path]) -> None:
        """Link the run to the files it reads, as the artifact an earlier stage logged for them
        (the same files give the same digest). W&B links inputs only online; an offline run
        records the artifact's name and digest under ``inputs/`` in its summary instead."""
        if self.run is None or artifact_mode() == "off":
            return
        artifact = self._artifact(name, kind, paths)
        if self.mode == "online":
            self.run.use_artifact(artifact)
        else:
            self.run.summary[f"inputs/{name}"] = artifact.digest

    def log_artifact(self, name: str, kind: str, paths: list[Path], metadata: dict[str, Any] | None = None) -> None:
        """Log files the run wrote as a W&B artifact: checksummed ``file://`` references (default)
        or uploaded copies (``ABSLD_WANDB_ARTIFACTS=file``); nothing when ``off``."""
        if self.run is not None and artifact_mode() != "off":
            self.run.log_artifact(self._artifact(name, kind, paths, metadata))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in metrics.items():
                self.run.summary[key] = value

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> Any:
        if self.run is None:
            return None
        import wandb

        table = wandb.Table(columns=columns, data=rows)
        self.run.log({key: table})
        return table

    def log_bar(self, key: str, labels: list[str], values: list[float], title: str,
                classes_shown: int = CLASSES_SHOWN) -> None:
        """A bar chart of one value per class. With more than ``2 * classes_shown`` classes the bars
        are the ``classes_shown`` lowest and highest values (lowest first; ties by class order), and
        the title says how many classes are left out (the stages log every class's value elsewhere:
        the summary and the class table)."""
        if self.run is None:
            return
        import wandb

        data = [[label, value] for label, value in zip(labels, values)]
        if len(data) > 2 * classes_shown:
            ordered = sorted(range(len(data)), key=lambda k: (values[k] if values[k] == values[k] else -float("inf"), k))
            data = [data[k] for k in ordered[:classes_shown] + ordered[-classes_shown:]]
            title = (f"{title} ({classes_shown} lowest and {classes_shown} highest of {len(labels)} classes; "
                     f"{len(labels) - 2 * classes_shown} omitted)")
        table = wandb.Table(columns=["class", "accuracy"], data=data)
        self.run.log({key: wandb.plot.bar(table, "class", "accuracy", title=title)})

    def log_image(self, key: str, path: str) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({key: wandb.Image(path)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
