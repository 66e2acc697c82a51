"""A stand-in for the ``wandb`` module that records what the stages hand to W&B.

``install(monkeypatch, folder)`` puts it in ``sys.modules`` and sets ``WANDB_MODE=offline``, so that
:class:`absld.tracking.Tracker` opens "runs" that only remember their ``init`` arguments, logged
rows, summary, config updates and how they finished: fast, no wandb service, no files. Artifacts
are for the real module (``ABSLD_WANDB_ARTIFACTS=off`` is set).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


class FakeRun:
    def __init__(self, folder: Path, **init: Any) -> None:
        self.init = init
        self.id, self.name, self.job_type = init["id"], init["name"], init["job_type"]
        self.config = dict(init.get("config") or {})
        self.summary: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        sync_dir = folder / "wandb" / f"offline-run-20261201_000000-{self.id}"
        self.dir = str(sync_dir / "files")
        self.settings = types.SimpleNamespace(sync_dir=str(sync_dir))
        self.url = f"https://wandb.example/runs/{self.id}"

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        self.exit_code = exit_code


class FakeWandb:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs: list[FakeRun] = []

    def init(self, **kwargs: Any) -> FakeRun:
        run = FakeRun(self.folder, **kwargs)
        self.runs.append(run)
        return run

    def of(self, job_type: str) -> list[FakeRun]:
        return [run for run in self.runs if run.job_type == job_type]


def install(monkeypatch: Any, folder: Path) -> FakeWandb:
    fake = FakeWandb(folder)
    module = types.ModuleType("wandb")
    module.init = fake.init  # type: ignore[attr-defined]
    module.Table = lambda columns, data: {"columns": columns, "data": data}  # type: ignore[attr-defined]
    module.Image = lambda path: {"image": path}  # type: ignore[attr-defined]
    module.plot = types.SimpleNamespace(bar=lambda table, x, y, title=None: {"bar": title})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("ABSLD_WANDB_ARTIFACTS", "off")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return fake
