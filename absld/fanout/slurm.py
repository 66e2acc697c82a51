"""The Slurm backend of a fan-out: one job per plan item, submitted through ``submitit`` (the
``slurm`` extra: ``pip install 'absld-repro[slurm]'``), each job running its item as
``dvc repro --single-item <stage>`` in the project (:class:`.runner.StageRun`), so DVC itself
writes ``dvc.lock`` on the shared filesystem.

What every job's ``#SBATCH`` lines say (:func:`job_parameters`):

- ``--job-name=absld-<12 hex of the project's path>-<stage>`` and ``--dependency=singleton``: Slurm
  starts a job only after every earlier job of the same name and user has ended, so no two jobs
  ever run one stage of one project (a second fan-out's job waits for the first's, then finds
  the stage up to date: a no-op);
- ``afterok:<ids>`` of the jobs of the items it waits for (:attr:`.plan.Item.after`: a student's
  evaluation after its training, ``analyze`` after every evaluation), in the same expression as
  ``singleton`` (Slurm's comma is AND): ``--dependency=afterok:11:12,singleton``. Jobs are
  submitted in plan order, so every id exists when a job names it; a failed item's dependants never
  start (Slurm leaves them pending with ``DependencyNeverSatisfied``);
- ``--gpus-per-node=1`` (:attr:`SlurmSettings.gpus_per_node`) for the teachers, students and
  evaluations; ``check``, ``prepare`` and ``analyze`` need no GPU and ask for none;
- ``--requeue`` and ``--signal=USR1@<signal_delay_s>``: at the time limit, and at preemption where
  the cluster sends the user signal then (``SlurmctldParameters=preempt_send_user_signal``; Slurm
  preempts with SIGTERM, then that signal), submitit calls the job's
  :meth:`.slurm_job.StageJob.checkpoint`: the stage is stopped as by Ctrl-C (it keeps its per-epoch
  checkpoint under ``checkpoints/``), and the job is requeued; the requeued job runs the same
  ``dvc repro --single-item``, which resumes from ``checkpoints/``. SIGTERM alone stops nothing:
  submitit's job process only logs it, and the stage ignores it (:data:`.slurm_job.CHILD_SIGNALS`).
  The signal is USR1 (the issue's; submitit's default is USR2, whose only reason, NCCL's use of
  USR1, does not apply to one GPU per job); each job's script exports
  ``SUBMITIT_PREEMPT_SIGNAL`` so that submitit's handler listens for the same signal.
- logs under ``logs/slurm/<job id>/`` (submitit's script, pickles and one ``<id>_0_log.out``
  with stderr in it); each stage's own output also streams into ``logs/fanout/<stage>.log``
  (every start of a requeued job appends there).

Where the upstream runs: ``check`` and ``prepare`` need the internet (the datasets) and no GPU,
which compute nodes often lack and have; they run here, on the node the fan-out is started from
(a login node), before anything is submitted (:attr:`SlurmSettings.upstream_jobs`: submit them as
CPU jobs instead). The teachers (``teacher``, ``teacher-clean``) are GPU jobs; the students wait
``afterok`` for them.

The cluster notes (setup, NFS, logs, requeue): docs/slurm.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from ..errors import UserError
from ..io import project_tag
from .plan import Item, Plan

INSTALL_HINT = "pip install 'absld-repro[slurm]'"
"""How to install the backend's one dependency (``submitit``)."""

HERE_STAGES = ("check", "prepare")
"""Upstream stages run on the fan-out's own node unless :attr:`SlurmSettings.upstream_jobs`."""

CPU_STAGES = ("check", "prepare", "analyze")
"""Stages whose jobs ask for no GPU."""

SIGNALS = ("USR1", "USR2")
"""The user signals submitit can checkpoint on (``SUBMITIT_PREEMPT_SIGNAL``)."""


class SlurmError(UserError, RuntimeError):
    """A fan-out to Slurm that cannot go on (submitit missing, bad settings, an upstream stage failed here)."""


@dataclass(frozen=True)
class SlurmSettings:
    """How every job of a fan-out is submitted.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        time_min: ``--time`` in minutes; a job that reaches it is requeued and resumes.
        cpus_per_task: ``--cpus-per-task``.
        mem_gb: ``--mem`` in GB.
        account: ``--account`` (None: the user's default).
        qos: ``--qos`` (None: the default).
        gpus_per_node: ``--gpus-per-node`` of the GPU items (teachers, students, evaluations).
        extra: further sbatch options by long name (``{"constraint": "a100"}`` -> ``--constraint=a100``;
            ``True`` -> a bare flag); they win over the ones above.
        folder: submitit's folder, relative to the project root: ``<folder>/<job id>/``.
        lock_retries: retries of ``dvc repro`` on DVC's repository lock (:class:`.runner.StageRun`).
        max_requeues: how many times a job may reach its time limit and be requeued (submitit's
            ``max_num_timeout``); a preemption requeues regardless.
        signal: the user signal that asks a job to checkpoint and requeue (``USR1`` or ``USR2``).
        signal_delay_s: seconds before the time limit at which Slurm sends it (``--signal=SIG@s``).
        stop_grace_s: seconds the job waits for the stopped stage to exit before it kills it
            (below ``signal_delay_s``: Slurm kills the job when the time is up).
        upstream_jobs: submit ``check`` and ``prepare`` as (CPU) jobs instead of running them here.
        setup: shell lines run in each job's script before the job (``module load cuda``, ...).
    """

    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 8
    mem_gb: float = 32.0
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    folder: str = "logs/slurm"
    lock_retries: int = 8
    max_requeues: int = 3
    signal: str = "USR1"
    signal_delay_s: int = 120
    stop_grace_s: float = 60.0
    upstream_jobs: bool = False
    setup: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = {"time_min": self.time_min, "cpus_per_task": self.cpus_per_task, "mem_gb": self.mem_gb,
                    "gpus_per_node": self.gpus_per_node, "signal_delay_s": self.signal_delay_s,
                    "stop_grace_s": self.stop_grace_s}
        for name, value in positive.items():
            if not value > 0:
                raise SlurmError(f"slurm {name} = {value!r}: must be positive")
        for name, value in {"lock_retries": self.lock_retries, "max_requeues": self.max_requeues}.items():
            if value < 0:
                raise SlurmError(f"slurm {name} = {value!r}: must be 0 or more")
        if self.signal not in SIGNALS:
            raise SlurmError(f"slurm signal = {self.signal!r}: must be one of {', '.join(SIGNALS)}")
        if self.stop_grace_s >= self.signal_delay_s:
            raise SlurmError(f"slurm stop_grace_s = {self.stop_grace_s} must be below signal_delay_s = "
                             f"{self.signal_delay_s} (the stage must have stopped before Slurm's time is up)")
        if self.signal_delay_s >= 60 * self.time_min:
            raise SlurmError(f"slurm signal_delay_s = {self.signal_delay_s} must be below the time limit "
                             f"({self.time_min} min)")
        bad = [key for key in self.extra if not re.fullmatch(r"[a-z][a-z0-9_-]*", key)]
        if bad:
            raise SlurmError(f"slurm extra options {bad}: give sbatch's long option names, without '--'")


class Submitted(NamedTuple):
    """One submitted item and its submitit job (``job.job_id``: Slurm's id)."""

    item: Item
    job: Any

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)


def require_submitit() -> Any:
    """The ``submitit`` module, else a :class:`SlurmError` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SlurmError(f"the Slurm backend needs submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


def job_name(root: Path, stage: str) -> str:
    """``absld-<project tag>-<stage>``: the name ``--dependency=singleton`` keys on."""
    return f"absld-{project_tag(root)}-{re.sub(r'[^A-Za-z0-9@._-]', '_', stage)}"


def dependency(after_ids: list[str]) -> str:
    """``afterok:<id>:<id>,singleton`` (or ``singleton`` alone): Slurm's comma is AND."""
    return ",".join(([f"afterok:{':'.join(after_ids)}"] if after_ids else []) + ["singleton"])


def runs_here(item: Item, settings: SlurmSettings) -> bool:
    """Whether ``item`` runs on the fan-out's node rather than as a job (:data:`HERE_STAGES`)."""
    return item.stage in HERE_STAGES and not settings.upstream_jobs


def mem_flag(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def job_setup(settings: SlurmSettings) -> list[str]:
    """The script's lines before the job: the user's, then the signal submitit must listen for."""
    return [*settings.setup, f"export SUBMITIT_PREEMPT_SIGNAL={settings.signal}"]


def job_parameters(root: Path, item: Item, after_ids: list[str], settings: SlurmSettings) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` for ``item``'s job, waiting for the jobs ``after_ids``."""
    return {
        "job_name": job_name(root, item.stage),
        "partition": settings.partition,
        "time": settings.time_min,
        "cpus_per_task": settings.cpus_per_task,
        "mem": mem_flag(settings.mem_gb),
        "account": settings.account,
        "qos": settings.qos,
        "gpus_per_node": None if item.stage in CPU_STAGES else settings.gpus_per_node,
        "dependency": dependency(after_ids),
        "signal_delay_s": settings.signal_delay_s,
        "stderr_to_stdout": True,
        "setup": job_setup(settings),
        "additional_parameters": {"requeue": True, "signal": f"{settings.signal}@{settings.signal_delay_s}",
                                  **settings.extra},
    }


def make_executor(root: Path, settings: SlurmSettings) -> Any:
    """submitit's ``SlurmExecutor`` writing under ``<root>/<settings.folder>/<job id>/``."""
    submitit = require_submitit()
    try:
        return submitit.SlurmExecutor(folder=Path(root) / settings.folder / "%j", max_num_timeout=settings.max_requeues)
    except RuntimeError as exc:  # no srun on PATH
        raise SlurmError(f"no Slurm here ({exc}); run the fan-out on a node of the cluster, or use --backend local") \
            from None


def configure(executor: Any, root: Path, item: Item, after_ids: list[str], settings: SlurmSettings) -> None:
    """Set ``executor``'s parameters for ``item``'s job: Slurm's (:func:`job_parameters`), or those
    of submitit's local executor (the time limit, the signal; no GPUs, names or dependencies)."""
    submitit = require_submitit()
    if isinstance(executor, submitit.SlurmExecutor):
        executor.update_parameters(**job_parameters(root, item, after_ids, settings))
    else:
        executor.update_parameters(timeout_min=settings.time_min, signal_delay_s=settings.signal_delay_s,
                                   stderr_to_stdout=True, setup=job_setup(settings))


def describe(root: Path, plan: Plan, settings: SlurmSettings) -> list[str]:
    """What :func:`submit` would do with ``plan``, one line per item (``--dry-run``): where it runs,
    its job's name, GPUs and the stages whose jobs it waits for."""
    lines = []
    for item in plan.items:
        if runs_here(item, settings):
            lines.append(f"{item.stage:<28} here, before any job (no GPU; the internet)")
            continue
        waits = [stage for stage in plan.direct_after(item) if not runs_here(plan.item(stage), settings)]
        gpus = "no GPU" if item.stage in CPU_STAGES else f"--gpus-per-node={settings.gpus_per_node}"
        after = f"afterok {', '.join(waits)}" if waits else "at once"
        lines.append(f"{item.stage:<28} job {job_name(root, item.stage)}: {gpus}, {after}, singleton")
    return lines


def await_success(root: Path, stage: str, job: Any, dependant: str) -> None:
    """Wait for ``job`` (of ``stage``) to end (an executor without Slurm's ``afterok``); a
    :class:`SlurmError` if it failed, so that ``dependant`` and what waits for it are not submitted."""
    from .runner import log_path

    try:
        job.result()
    except Exception as exc:  # submitit's FailedJobError, UncompletedJobError
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise SlurmError(f"{stage} (job {job.job_id}) failed, so {dependant} and what waits for it were not "
                         f"submitted; see {log_path(root, stage)} ({last})") from None


def submit(root: Path, plan: Plan, settings: SlurmSettings, *, executor: Any = None,
           say: Callable[[str], None] = lambda line: None) -> list[Submitted]:
    """Run the plan's :data:`HERE_STAGES` items here (in plan order; a failure raises before
    anything is submitted), then submit every other item as one job, in plan order, each waiting
    ``afterok`` for the jobs of the items it waits for. Returns the jobs in submission order.

    ``executor``: a submitit executor (default: :func:`make_executor`). With Slurm's, the
    dependencies are Slurm's; with any other (submitit's ``LocalExecutor``: tests, a workstation)
    an item is submitted only once the jobs it waits for have succeeded (``job.result()``)."""
    from .runner import StageRun
    from .slurm_job import StageJob

    submitit = require_submitit()
    root = Path(root)
    executor = make_executor(root, settings) if executor is None else executor  # no Slurm: stop before any work
    for item in plan.items:
        if runs_here(item, settings):
            say(f"{item.stage}: running here (no GPU; compute nodes may have no internet)")
            outcome = StageRun(root, item.stage, lock_retries=settings.lock_retries,
                               header=f"[slurm] {item.stage} on the submitting node").run()
            if not outcome.ok:
                raise SlurmError(f"{item.stage} failed here (exit {outcome.returncode}); nothing was submitted; "
                                 f"see {outcome.log}")
    is_slurm = isinstance(executor, submitit.SlurmExecutor)
    jobs: dict[str, Any] = {}
    out: list[Submitted] = []
    for item in plan.items:
        if runs_here(item, settings):
            continue
        waits = [jobs[stage] for stage in item.after if stage in jobs]
        if not is_slurm:
            for stage in item.after:
                if stage in jobs:
                    await_success(root, stage, jobs[stage], item.stage)
        configure(executor, root, item, [str(job.job_id) for job in waits], settings)
        body = StageJob(str(root.resolve()), item.stage, lock_retries=settings.lock_retries,
                        usr_signal=settings.signal, stop_grace_s=settings.stop_grace_s)
        job = executor.submit(body)
        jobs[item.stage] = job
        out.append(Submitted(item, job))
        after = f" after {', '.join(str(j.job_id) for j in waits)}" if waits else ""
        say(f"{item.stage}: job {job.job_id}{after}")
    return out


def settings_from_pairs(pairs: Iterable[str]) -> SlurmSettings:
    """``absld fanout --slurm KEY=VALUE ...``: a key of :class:`SlurmSettings` (``time_min=720``,
    ``upstream_jobs=true``; ``setup`` may repeat, one shell line each) or else any sbatch long
    option (``constraint=a100`` -> ``--constraint=a100``; a bare ``exclusive`` -> ``--exclusive``)."""
    names = {f.name: f for f in fields(SlurmSettings)}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    setup: list[str] = []
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if key in ("extra", "folder") or not key:
            raise SlurmError(f"--slurm {pair!r}: give KEY=VALUE with a setting ({', '.join(_SETTABLE)}) "
                             "or an sbatch long option")
        if key == "setup":
            setup.append(text)
        elif key in names:
            if not eq:
                raise SlurmError(f"--slurm {pair!r}: {key} needs a value ({key}=...)")
            values[key] = _typed(key, text, names[key].type)
        else:
            extra[key] = text if eq else True
    return SlurmSettings(**values, extra=extra, setup=tuple(setup))


_SETTABLE = tuple(f.name for f in fields(SlurmSettings) if f.name not in ("extra", "folder"))


def _typed(key: str, text: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise SlurmError(f"--slurm {key}={text!r}: expected {'true or false' if kind == 'bool' else 'a number'} "
                         f"({kind})") from None
    return text or None
