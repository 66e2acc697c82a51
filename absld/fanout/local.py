"""The local backend: the plan's items over a pool of GPU slots on this machine.

A slot is one GPU (``CUDA_VISIBLE_DEVICES`` of the child) and, with ``per_gpu`` > 1, one of
several processes sharing it (small students rarely fill an H100). A free slot takes the first
ready item in the plan's order (:func:`absld.fanout.plan.order_key`); an item is ready when every
item it waits for has succeeded, and is skipped when one of them failed. Each start and end is a
line of ``logs/fanout/events.jsonl`` (stage, slot, GPU, time, exit status, attempts), the record a
test or a user reads to see which GPU ran what, and when.

The upstream (``check``, ``prepare``, the teachers) runs first; then the plan is read again from
DVC, so the matrix items that run are those stale once the teachers are final.
Ctrl-C stops every running item as Ctrl-C stops a stage (each saves its checkpoint) and ends
with exit status 130; rerunning the fan-out resumes them.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..lease import FANOUT_SLOT_ENV as SLOT_ENV, parse_gpus as lease_gpus  # every child's slot (gpu0.1: the second process on GPU 0)
from .plan import Item, Plan, order_key
from .runner import Outcome, StageRun


@dataclass(frozen=True)
class Slot:
    gpu: str
    """The child's ``CUDA_VISIBLE_DEVICES``."""
    index: int
    """Which of the GPU's ``per_gpu`` processes."""

    @property
    def name(self) -> str:
        return f"gpu{self.gpu}.{self.index}"


def make_slots(gpus: Iterable[str], per_gpu: int = 1) -> list[Slot]:
    """Every GPU's ``per_gpu`` slots, the GPUs interleaved (``0.0, 1.0, 0.1, 1.1``): a pool
    busy on fewer items than slots spreads them over the GPUs first."""
    gpus = list(gpus)
    return [Slot(gpu, k) for k in range(per_gpu) for gpu in gpus]


@dataclass
class Report:
    """What a fan-out did: each run item's outcome, the items skipped because an item they wait
    for failed, the items not started (interrupted)."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [stage for stage, outcome in self.outcomes.items() if not outcome.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped and not self.not_started and not self.interrupted


class Pool:
    """Runs items over ``slots`` (see the module's docstring); ``events`` is the JSON-lines log."""

    def __init__(self, root: Path, slots: list[Slot], *, lock_retries: int = 8, wait_for_lock: bool = True,
                 echo: Callable[[str], None] = print, env: dict[str, str] | None = None,
                 command: Callable[[str], list[str]] | None = None) -> None:
        if not slots:
            raise ValueError("a pool needs at least one slot")
        self.root, self.slots, self.lock_retries, self.echo, self.env = root, slots, lock_retries, echo, env
        self.wait_for_lock = wait_for_lock
        self.command = command
        """Replaces ``dvc repro --single-item <stage>`` per stage (tests)."""
        self.events = root / "logs" / "fanout" / "events.jsonl"
        self._lock = threading.Lock()
        self._running: dict[str, StageRun] = {}

    def _event(self, **fields: object) -> None:
        self.events.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.events, "a") as handle:
            handle.write(json.dumps({"time": time.time(), **fields}) + "\n")

    def _child_env(self, slot: Slot) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        env[SLOT_ENV] = slot.name
        return env

    def run(self, items: list[Item], report: Report) -> Report:
        """Run ``items`` (each after the items of ``items`` it waits for) into ``report``."""
        planned = {item.stage for item in items}
        pending = sorted(items, key=order_key)
        done: set[str] = set()
        dead: set[str] = set()
        free = list(self.slots)
        finished: queue.Queue[tuple[Slot, Item, Outcome]] = queue.Queue()
        busy = 0
        try:
            while pending or busy:
                for item in list(pending):  # skip what waits for a failure
                    if any(after in dead for after in item.after):
                        pending.remove(item)
                        dead.add(item.stage)
                        report.skipped.append(item.stage)
                        self.echo(f"skip   {item.stage}: waits for a failed item")
                while free:
                    ready = [i for i in pending if all(a in done or a not in planned for a in i.after)]
                    if not ready:
                        break
                    item, slot = ready[0], free.pop(0)
                    pending.remove(item)
                    busy += 1
                    self._start(slot, item, finished)
                if not busy:
                    break
                slot, item, outcome = finished.get()
                busy -= 1
                free.append(slot)
                free.sort(key=self.slots.index)
                report.outcomes[item.stage] = outcome
                (done if outcome.ok else dead).add(item.stage)
                self._event(event="end", stage=item.stage, slot=slot.name, gpu=slot.gpu,
                            returncode=outcome.returncode, attempts=outcome.attempts)
                retries = f" after {outcome.attempts - 1} lock retries" if outcome.attempts > 1 else ""
                word = "done  " if outcome.ok else "FAILED"
                self.echo(f"{word} {item.stage} on {slot.name}{retries}"
                          + ("" if outcome.ok else f" (exit {outcome.returncode}; log {outcome.log})"))
        except KeyboardInterrupt:
            report.interrupted = True
            self.stop_all()
            while busy:
                slot, item, outcome = finished.get()
                busy -= 1
                report.outcomes[item.stage] = outcome
                self._event(event="end", stage=item.stage, slot=slot.name, gpu=slot.gpu,
                            returncode=outcome.returncode, attempts=outcome.attempts)
        report.not_started.extend(i.stage for i in pending)
        return report

    def _start(self, slot: Slot, item: Item, finished: queue.Queue) -> None:
        header = (f"[fanout] {item.stage} on slot {slot.name} (CUDA_VISIBLE_DEVICES={slot.gpu}), "
                  f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        run = StageRun(self.root, item.stage, env=self._child_env(slot), lock_retries=self.lock_retries,
                       wait_for_lock=self.wait_for_lock, header=header, child_signals={signal.SIGINT: signal.SIG_DFL},
                       command=self.command(item.stage) if self.command else None)
        with self._lock:
            self._running[item.stage] = run
        self._event(event="start", stage=item.stage, slot=slot.name, gpu=slot.gpu)
        self.echo(f"start  {item.stage} on {slot.name} (CUDA_VISIBLE_DEVICES={slot.gpu})")

        def work() -> None:
            try:
                outcome = run.run()
            except Exception as exc:  # noqa: BLE001 - reported as the item's failure, the pool goes on
                outcome = Outcome(item.stage, -1, 1, run.log)
                self.echo(f"error  {item.stage}: {exc}")
            finally:
                with self._lock:
                    self._running.pop(item.stage, None)
            finished.put((slot, item, outcome))

        threading.Thread(target=work, name=f"fanout-{item.stage}", daemon=True).start()

    def stop_all(self) -> None:
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.stop()


def fan_out(plan_now: Callable[[], Plan], pool: Pool) -> tuple[Report, Plan]:
    """Run the upstream of ``plan_now()``, then the rest of a fresh ``plan_now()``; the report
    and the plan read after the run (no items when DVC finds every stage up to date; when
    interrupted, the last plan read)."""
    report = Report()
    plan = plan_now()
    if plan.upstream():
        pool.run(plan.upstream(), report)
        if report.ok:
            plan = plan_now()
            if plan.upstream():  # it ran, yet DVC still finds it stale: nothing downstream can start
                report.not_started.extend(plan.stages)
    if report.ok:
        pool.run([item for item in plan.items if item.kind != "upstream"], report)
    return report, plan if report.interrupted else plan_now()


def parse_gpus(text: str | None) -> list[str]:
    """``--gpus``: comma-separated GPU indices (``0,1``), each once (:func:`absld.lease.parse_gpus`);
    None: every GPU torch sees."""
    from ..errors import UserError

    if text is None:
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise UserError("no CUDA GPU found: pass --gpus with the indices to use (e.g. --gpus 0,1; on a "
                            "machine without GPUs the slots still run the stages, on the device params.yaml names)")
        return [str(k) for k in range(count)]
    return [str(gpu) for gpu in lease_gpus(text, "--gpus ")]
