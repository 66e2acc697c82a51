"""Experiment tracking: one W&B run per stage, plus the files DVC reads (metrics and plots).

W&B's mode comes from the ``WANDB_MODE`` environment variable (``offline`` when unset, so nothing
leaves the machine unless the user asks for ``online``; the tests set ``disabled``, in which case
wandb is not even imported). Runs are grouped by study (``group``), typed by stage
(``job_type``) and named after the DVC experiment (``DVC_EXP_NAME``) when there is one.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Params


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return mode or "offline"


class Tracker:
    """A W&B run (or nothing, when disabled) with a small, stable API for the stages."""

    def __init__(self, params: Params, stage: str, *, name: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.stage = stage
        self.mode = wandb_mode()
        self.run = None
        if self.mode == "disabled":
            return
        os.environ["WANDB_MODE"] = self.mode  # wandb reads the environment, not only mode=
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        exp = os.environ.get("DVC_EXP_NAME")
        run_name = "-".join(p for p in (exp, name or stage) if p)
        self.run = wandb.init(
            project=params.wandb.project,
            entity=params.wandb.entity,
            group=params.study,
            job_type=stage,
            name=run_name,
            tags=list(params.wandb.tags),
            config=config if config is not None else params.model_dump(mode="json"),
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

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

    def log_bar(self, key: str, labels: list[str], values: list[float], title: str) -> None:
        if self.run is None:
            return
        import wandb

        table = wandb.Table(columns=["class", "accuracy"], data=[[l, v] for l, v in zip(labels, values)])
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
