"""The file layout of a project: every path a stage reads or writes, in one place.

The stage commands (``pipeline/``) build one :class:`Layout` for the project directory and pass it
to the stage's ``run_*()``; nothing else in the library names a path. dvc.yaml lists the same paths
as the stages' deps and outs (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .vocab import ModelId

SCRATCH = "scratch"
"""Where a student outside the DVC matrix (distill.methods x seeds) goes: ``scratch/`` mirrors
``models/``, ``results/`` and ``plots/`` for it, is gitignored, and no stage reads it, so an ad-hoc
`absld distill`/`absld evaluate` leaves the study and DVC's view of it as they were. (One cache lives there
too: the teachers' clean-logit tables, :meth:`Layout.teacher_table`, which the distill stages read when
present and whose presence changes no result.)"""

OUTPUT_ROOTS = ("data", "models", "results", "plots", "checkpoints", "logs", SCRATCH)
"""The folders the stages write into (each under the project directory)."""


@dataclass(frozen=True)
class Layout:
    """Paths under ``root`` (the project directory; relative paths by default, as DVC runs stages)."""

    root: Path = Path(".")
    ad_hoc: bool = False
    """A student outside the DVC matrix: its model, results and plots go under ``root/scratch/``
    (:data:`SCRATCH`); the data, the teacher, the resumable ``checkpoints/`` and ``logs/`` stay where
    they are, so adding the seed to the matrix later resumes from the same checkpoints."""

    def scratch(self) -> "Layout":
        """This layout for a student outside the DVC matrix."""
        return replace(self, ad_hoc=True)

    def scratch_note(self, model_id: str) -> str:
        """The one line a stage prints for a student outside the DVC matrix."""
        return (f"note: {model_id} is outside the DVC matrix (distill.methods x seeds of params.yaml): its model, "
                f"results and plots go under {self.root / SCRATCH}/ (gitignored), which DVC and `absld analyze` "
                "never read")

    @property
    def _students_root(self) -> Path:
        return self.root / SCRATCH if self.ad_hoc else self.root

    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    # the teacher stage
    @property
    def teacher_checkpoint(self) -> Path:
        return self.root / "models/teacher.pt"

    @property
    def teacher_info(self) -> Path:
        return self.root / "models/teacher.json"

    @property
    def teacher_results(self) -> Path:
        return self.root / "results/teacher"

    @property
    def teacher_resume(self) -> Path:
        return self.root / "checkpoints/teacher/last.pt"

    @property
    def teacher_downloads(self) -> Path:
        return self.root / "checkpoints/teacher/downloads"

    # the teacher-clean stage (B-MTARD's second, clean teacher)
    @property
    def teacher_clean_checkpoint(self) -> Path:
        """The clean teacher, or a small constant placeholder when teacher_clean.source is none."""
        return self.root / "models/teacher_clean.pt"

    @property
    def teacher_clean_info(self) -> Path:
        return self.root / "models/teacher_clean.json"

    @property
    def teacher_clean_results(self) -> Path:
        return self.root / "results/teacher_clean"

    @property
    def teacher_clean_resume(self) -> Path:
        return self.root / "checkpoints/teacher_clean/last.pt"

    @property
    def teacher_clean_downloads(self) -> Path:
        return self.root / "checkpoints/teacher_clean/downloads"

    @property
    def teacher_clean_links(self) -> Path:
        """One small file per method (:meth:`teacher_clean_of`), written by the teacher-clean stage."""
        return self.root / "models/teacher_clean_of"

    def teacher_clean_of(self, method: str) -> Path:
        """What ``method`` distils from besides the robust teacher: the clean teacher's sha256 for a method
        that uses one, a constant line for every other. Each distill@<method>-<seed> stage depends on its
        method's file, so a new clean teacher reruns the students that distil from it and no other
        (dvc.yaml: DVC cannot give one matrix item a dependency that the others lack)."""
        return self.teacher_clean_links / f"{method}.txt"

    # the distill stage
    def student_checkpoint(self, method: str, seed: int) -> Path:
        return self._students_root / "models/students" / method / f"seed{seed}.pt"

    def distill_results(self, method: str, seed: int) -> Path:
        return self._students_root / "results/distill" / method / f"seed{seed}"

    def distill_resume(self, method: str, seed: int) -> Path:
        return self.root / "checkpoints/distill" / method / f"seed{seed}" / "last.pt"

    def teacher_table(self, key: str) -> Path:
        """The cached clean-logit table of a teacher (absld/train/teacher_table.py), shared by its students:
        under the gitignored scratch/, no DVC dep or out, keyed by everything that can change its bits."""
        return self.root / SCRATCH / "teacher_logits" / f"{key}.pt"

    def distill_plots(self, method: str, seed: int) -> Path:
        return self._students_root / "plots/distill" / method / f"seed{seed}"

    # the evaluate stage; ``model_id`` = teacher or <method>/seed<S>
    def eval_dir(self, model_id: str) -> Path:
        return self._students_root / "results/eval" / model_id

    def eval_resume(self, model_id: str) -> Path:
        """An interrupted evaluation's finished batches."""
        return self.root / "checkpoints/eval" / model_id / "progress.npz"

    def eval_plots(self, model_id: str) -> Path:
        return self._students_root / "plots/eval" / model_id

    def model_checkpoint(self, model_id: str) -> Path:
        model = ModelId.parse(model_id)
        return self.teacher_checkpoint if model.is_teacher else self.student_checkpoint(model.method, model.seed)

    @property
    def logs(self) -> Path:
        """Wall-clock times (per epoch, per attack): untracked by DVC and Git, so that identical inputs
        give byte-identical tracked outputs; the same numbers also go to W&B."""
        return self.root / "logs"

    # the check and analyze stages
    @property
    def checked(self) -> Path:
        """The check stage's constant stamp (its only output)."""
        return self.root / "results/params-checked.txt"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "results"

    @property
    def analysis_plots(self) -> Path:
        return self.root / "plots/analyze"

    @property
    def published(self) -> Path:
        return self.root / "references/published.yaml"

    @property
    def fairness_json(self) -> Path:
        return self.analysis_dir / "fairness.json"

    @property
    def headline_json(self) -> Path:
        """The study's few numbers per model, the only metrics DVC lists (``dvc exp show``/``diff``)."""
        return self.analysis_dir / "headline.json"

    @property
    def comparisons_json(self) -> Path:
        """Seed summaries, paired tests and the analysis meta (fairness.json keeps exactly its contract)."""
        return self.analysis_dir / "comparisons.json"

    @property
    def training_json(self) -> Path:
        """Each student's checkpoint choice and last-epoch training metrics, gathered in one file (not a
        DVC metrics file: ``dvc exp show`` lists results/headline.json only)."""
        return self.analysis_dir / "training.json"

    @property
    def classwise_csv(self) -> Path:
        """Every class of every model (each seed) under every attack, long form."""
        return self.analysis_dir / "classwise.csv"

    def table(self, suffix: str) -> Path:
        """results/table.{md,tex,csv}."""
        return self.analysis_dir / f"table.{suffix}"

    @property
    def report_md(self) -> Path:
        return self.analysis_dir / "report.md"

    @property
    def bench_json(self) -> Path:
        return self.root / "results/bench.json"

    @property
    def gpu_check_json(self) -> Path:
        """``absld gpu-check``'s figures (not a DVC output: times differ on every run)."""
        return self.root / "results/gpu_check.json"
