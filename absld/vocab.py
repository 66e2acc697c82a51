"""The project's vocabularies, each defined once: method, dataset and AutoAttack names, their
display labels, and model ids. Everything else derives from these (the ``Literal`` types of the
config, the registries of absld.methods and absld.data, the labels of tables and figures); a test
holds the registries to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METHOD_LABELS: dict[str, str] = {
    "absld": "ABSLD",
    "rslad": "RSLAD",
    "ard": "ARD",
    "iad": "IAD",
    "adaad": "AdaAD",
    "sat": "SAT",
    "trades": "TRADES",
    "fair_rslad": "Fair-RSLAD",
    "fair_ard": "Fair-ARD",
    "fair_iad": "Fair-IAD",
    "reweighted_rslad": "Re-weighted RSLAD",
    "frl_rw": "FRL-RW",
    "frl_rwrm": "FRL-RWRM",
    "cfa": "CFA",
    "wat": "WAT",
    "dafa": "DAFA",
    "trix": "TRIX",
    "b_mtard": "B-MTARD",
}
"""Every distillation method (params name -> label), in the order tables list them."""
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_LABELS)
CLEAN_TEACHER_METHODS: tuple[str, ...] = ("b_mtard",)
"""The methods that distil from a second, clean (non-robust) teacher besides the robust one
(params section ``teacher_clean``, DVC stage ``teacher-clean``); their classes say ``uses_clean_teacher``."""
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]

DATASET_LABELS: dict[str, str] = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "fashion-mnist": "Fashion-MNIST",
    "tinyimagenet": "Tiny-ImageNet",
    "synthetic": "synthetic data",
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASET_LABELS)
DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]

AA_ATTACK_NAMES: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AutoAttackName = Literal[AA_ATTACK_NAMES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ModelId:
    """``teacher`` or ``<method>/seed<S>``: how every file, stage and table names a model."""

    method: str | None  # None: the teacher
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelId":
        if text == "teacher":
            return cls(None)
        method, sep, seed = text.partition("/seed")
        if not sep or not seed.isdigit() or method not in METHOD_NAMES:
            raise ValueError(f"{text!r} is not a model id: use 'teacher' or '<method>/seed<S>' with a method of "
                             f"{', '.join(METHOD_NAMES)}")
        return cls(method, int(seed))

    @classmethod
    def student(cls, method: str, seed: int) -> "ModelId":
        return cls(method, seed)

    @property
    def is_teacher(self) -> bool:
        return self.method is None

    def __str__(self) -> str:
        return "teacher" if self.method is None else f"{self.method}/seed{self.seed}"


WORST = "worst"
"""The records' column of the pointwise worst case: robust to every attack that was run."""
