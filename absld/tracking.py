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

import json
import netrc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .params import AnalyzeConfig, Params
from .distributed import is_main
from .errors import UserError
from .io import sha256_file, short_hash, write_json


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


def dvc_temporary_workspace(cwd: Path | None = None) -> tuple[Path, Path] | None:
    """``(repository, workspace)`` when ``cwd`` is inside a DVC temporary workspace (``dvc exp run
    --temp``/``--queue`` run in ``<repo>/.dvc/tmp/exps/...``, deleted afterwards); None otherwise."""
    here = (cwd or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i]), here
    return None


def wandb_dir(cwd: Path | None = None) -> str | None:
    """Where W&B writes its ``wandb/`` folder: ``WANDB_DIR`` when set; inside a DVC temporary
    workspace (:func:`dvc_temporary_workspace`) the repository itself, so that offline runs survive
    for ``wandb sync``; otherwise None (W&B's default: the working directory)."""
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"]
    temporary = dvc_temporary_workspace(cwd)
    return str(temporary[0]) if temporary is not None else None


def surviving_path(path: Path, cwd: Path | None = None) -> Path:
    """The absolute path under which ``path`` (relative to the stage's directory, as the layout
    gives it) outlives the stage: itself, except inside a DVC temporary workspace, which DVC
    deletes after the experiment; there, the same relative path in the repository itself (where
    ``dvc exp apply <experiment>`` puts the experiment's file)."""
    temporary = dvc_temporary_workspace(cwd)
    resolved = ((cwd or Path.cwd()) / path).resolve()
    if temporary is None:
        return resolved
    repository, workspace = temporary
    try:
        return repository / resolved.relative_to(workspace)
    except ValueError:  # a file outside the temporary workspace: it is not deleted with it
        return resolved


def _repository_relative(path: Path) -> str:
    """``path`` relative to the stage's directory (the repository or its DVC temporary copy)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


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


def student_config(params: Params, method: str, seed: int) -> dict[str, Any]:
    """What trained student ``method``/seed ``seed``, as W&B config: the distill run's config, and
    the same keys in the evaluate run of that student (so that W&B groups and colours class-wise
    robustness by, e.g., ``distill.absld.beta``)."""
    return {"method": method, "seed": seed, "profile": params.profile,
            "distill": params.distill.model_dump(mode="json", include={"student", "train", "attack", "kl_reduction",
                                                                        "select", "select_eval", "train_per_class",
                                                                        method})}


def artifact_name(model_id: str) -> str:
    """W&B artifact names allow no "/": ``absld/seed0`` -> ``absld-seed0``."""
    return model_id.replace("/", "-")


RUN_ID_FILE = "wandb-run.json"
"""The name of the file that keeps a resumable stage's W&B run id beside its checkpoint."""


class Tracker:
    """A W&B run (or nothing, when disabled) with a small, stable API for the stages.

    ``resume``: ``(folder, fingerprint)`` of the stage's resumable work (the folder of its checkpoint
    under ``checkpoints/``, and the fingerprint that decides whether the checkpoint is resumed). The
    run id is kept there in ``wandb-run.json``, so a stage interrupted (killed, failed, stopped
    after some epochs) and started again continues the same W&B run whatever its DVC experiment is
    now called; :meth:`complete` says that the stage's work is done, and the file goes with a
    successful finish. ``echo`` receives the closing line that says where the run was logged."""

    def __init__(self, params: Params, stage: str, *, name: str | None = None,
                 config: dict[str, Any] | None = None, resume: tuple[Path, str] | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.stage = stage
        self.mode = wandb_mode()
        self.run = None
        self.echo = echo or print
        self.run_id_file = Path(resume[0]) / RUN_ID_FILE if resume is not None else None
        self.completed = False
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
        # the same stage with the same settings (a killed one started again) resumes its run
        run_id = short_hash(where.project, where.entity, where.group, exp, run_name, config)
        if resume is not None:
            run_id = self._resumed_id(resume[1]) or run_id
        self.run = wandb.init(
            project=where.project,
            entity=where.entity,
            group=where.group,
            job_type=stage,
            name=run_name,
            id=run_id,
            resume="allow",
            tags=list(where.tags),
            config=config,
            reinit="finish_previous",
        )
        # which GPU ran it (a launcher's or the GPU lease's choice, absld/lease.py): never part of the run's id
        self.run.config.update({"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, allow_val_change=True)
        if resume is not None:
            write_json(self.run_id_file, {"fingerprint": resume[1], "id": self.run.id, "project": where.project})
        if stage in EPOCH_STAGES:  # curves against the epoch, also across a resumed run
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")

    def _resumed_id(self, fingerprint: str) -> str | None:
        """The run id kept beside the same resumable work (the same fingerprint), if any."""
        try:
            kept = json.loads(self.run_id_file.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return None
        if isinstance(kept, dict) and kept.get("fingerprint") == fingerprint and isinstance(kept.get("id"), str):
            return kept["id"]
        return None

    def complete(self) -> None:
        """The stage's work is done: a successful finish forgets the kept run id (a later run of the
        stage, e.g. in another experiment, is another W&B run)."""
        self.completed = True

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
                # the checksum is this file's; the address, where the file outlives a DVC temporary
                # workspace (the digest depends on the checksums alone, not on the addresses)
                artifact.manifest.entries[path.name].ref = surviving_path(path).as_uri()
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
        or uploaded copies (``ABSLD_WANDB_ARTIFACTS=file``); nothing when ``off``. Its metadata
        also names each file by its path in the repository and its sha256 (``files``), and, in a
        DVC temporary workspace (``dvc exp run --queue``/``--temp``), the DVC experiment whose
        ``dvc exp apply`` puts these files at the referenced paths."""
        if self.run is None or artifact_mode() == "off":
            return
        files = {Path(p).name: {"path": _repository_relative(Path(p)), "sha256": sha256_file(p)} for p in paths}
        extra: dict[str, Any] = {"files": files}
        if dvc_temporary_workspace() is not None:
            extra["dvc_experiment"] = os.environ.get("DVC_EXP_NAME")
            extra["written_in"] = "a DVC temporary workspace (deleted afterwards)"
        self.run.log_artifact(self._artifact(name, kind, paths, {**(metadata or {}), **extra}))

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

    def where_logged(self) -> str | None:
        """One line saying where the run is: its URL online; offline its folder and the
        ``wandb sync`` command that uploads it. None when nothing is logged."""
        if self.run is None:
            return None
        if self.mode == "online":
            return f"W&B: run {self.run.name} at {self.run.url}"
        folder = getattr(self.run.settings, "sync_dir", None) or str(Path(self.run.dir).parent)
        shown = os.path.relpath(folder)
        if shown.startswith(".."):
            shown = folder
        return f"W&B: run {self.run.name} logged offline in {shown}; upload it with `wandb sync {shown}`"

    def finish(self, exit_code: int = 0) -> None:
        """Close the run: ``exit_code`` 0 a finished run (then the closing line is echoed), any other a
        failed one (an exception or an interrupt inside the stage)."""
        if self.run is None:
            return
        line = self.where_logged()
        self.run.finish(exit_code=exit_code)
        self.run = None
        if exit_code == 0:
            if self.completed and self.run_id_file is not None:
                self.run_id_file.unlink(missing_ok=True)
            self.echo(line)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None and self.run is not None:
            self.run.summary["failure"] = exc_type.__name__  # the type only: a message may hold anything
        self.finish(exit_code=0 if exc_type is None else 1)
