"""Which stages of the DAG a fan-out runs, in which order, after what.

The plan is read from DVC itself: the stage graph of ``dvc.yaml`` (``Repo.index.graph``) and
``dvc status`` (``Repo.status``). A stage is **stale** when DVC says so (a dep, param, command or
output changed); a stage downstream of a stale one **may run**: it is in the plan, after it, and
``dvc repro --single-item`` decides when its turn comes (a retrained student whose bytes did not
change leaves its evaluation up to date; DVC then skips it in a second or two). One exception:
``check``'s output never changes (``pipeline/check.py``), so it stales nothing downstream.
Every other stage is **up to date** and left out.

Order: the upstream (``check``, ``prepare``, the teachers) first; the fan-out runs them, then
plans again, so that the matrix items it runs are exactly those DVC finds stale once the teachers
are final. Among the items ready to start: evaluations first (the teacher's as soon as the teacher
is there, a student's right after its training: short, and they unblock the table), then students
by cost, longest first (the longest-processing-time rule keeps the last wave short), ``analyze``
last. The cost of a student is its seconds from ``results/bench.json`` (``absld bench`` on the
machine: its measured seconds per image-step x images x the method's epochs) where that file has
the method, else images x epochs x (attack steps + 1) in relative units; :attr:`Plan.cost_source`
says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..params import Params

UPSTREAM = ("check", "prepare", "teacher", "teacher-clean")
"""The stages every matrix item needs; run once, before the matrix."""

CONSTANT_OUTPUT = ("check",)
"""Stages whose outputs never change when they rerun (``check`` writes a constant file)."""

KIND_ORDER = {"upstream": 0, "evaluation": 1, "student": 2, "other": 3, "analysis": 4}
"""Dispatch priority of the ready items, by kind (ties: cost, longest first; then the stage name)."""


def kind_of(stage: str) -> str:
    """``upstream``, ``student`` (``distill@...``), ``evaluation`` (``evaluate@...``,
    ``evaluate-teacher``), ``analysis`` (``analyze``) or ``other``."""
    base = stage.split("@", 1)[0]
    if base in UPSTREAM:
        return "upstream"
    if base == "distill":
        return "student"
    if base.startswith("evaluate"):
        return "evaluation"
    if base == "analyze":
        return "analysis"
    return "other"


def matrix_key(stage: str) -> tuple[str, int] | None:
    """``(method, seed)`` of a matrix item's address (``distill@absld-0`` -> ``("absld", 0)``)."""
    _, at, key = stage.partition("@")
    method, dash, seed = key.rpartition("-")
    if not at or not dash or not seed.isdigit():
        return None
    return method, int(seed)


@dataclass(frozen=True)
class Item:
    """One stage to run: its DVC address, kind, the planned stages it waits for, its cost (for the
    order), its wave (0: waits for nothing in the plan; else one more than its latest wait) and
    whether DVC already finds it stale (else it runs only if an upstream item changes its inputs)."""

    stage: str
    kind: str
    after: tuple[str, ...]
    cost: float
    wave: int
    stale: bool


@dataclass(frozen=True)
class Plan:
    """The items in dispatch order (every item after the items it waits for), the stages left out
    as up to date, and where the costs came from."""

    items: tuple[Item, ...]
    up_to_date: tuple[str, ...]
    cost_source: str

    @property
    def stages(self) -> list[str]:
        return [item.stage for item in self.items]

    def item(self, stage: str) -> Item:
        for item in self.items:
            if item.stage == stage:
                return item
        raise KeyError(stage)

    def waves(self) -> list[list[Item]]:
        """The items by wave (wave k waits only for waves < k)."""
        out: list[list[Item]] = [[] for _ in range(max((i.wave for i in self.items), default=-1) + 1)]
        for item in self.items:
            out[item.wave].append(item)
        return out

    def upstream(self) -> list[Item]:
        return [item for item in self.items if item.kind == "upstream"]

    def direct_after(self, item: Item) -> tuple[str, ...]:
        """``item.after`` less what another of its waits already waits for (what the text shows)."""
        def upstream_of(stage: str, seen: set[str]) -> set[str]:
            for after in self.item(stage).after:
                if after not in seen:
                    seen.add(after)
                    upstream_of(after, seen)
            return seen

        implied = set().union(*(upstream_of(after, set()) for after in item.after)) if item.after else set()
        return tuple(after for after in item.after if after not in implied)

    def lines(self) -> list[str]:
        """The plan as text (``absld fanout --dry-run``)."""
        if not self.items:
            return ["nothing to run: every stage is up to date"]
        unit = "s" if self.cost_source.startswith("results/bench.json") else "units"
        out = [f"{len(self.items)} stages to run in {len(self.waves())} waves "
               f"({len(self.up_to_date)} up to date); cost: {self.cost_source}"]
        for number, wave in enumerate(self.waves()):
            out.append(f"wave {number}:")
            for item in sorted(wave, key=order_key):
                why = "stale" if item.stale else "runs if its inputs change"
                after = f"after {', '.join(self.direct_after(item))}" if item.after else "at once"
                cost = f", cost {item.cost:.3g} {unit}" if item.kind == "student" else ""
                out.append(f"  {item.stage:<28} {item.kind:<10} {why}; {after}{cost}")
        return out


def order_key(item: Item) -> tuple[int, float, str]:
    """Dispatch priority among ready items (smaller first)."""
    return KIND_ORDER[item.kind], -item.cost, item.stage


def student_costs(params: Params, bench: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """Cost per student of each method: seconds from a ``results/bench.json`` dict that has every
    method, else relative units (images x epochs x (attack steps + 1))."""
    from ..bench_projection import measured_rates, training_images

    distill = params.distill
    images = training_images(params, distill.train_per_class)
    epochs = {m: distill.method_config(m).train.apply(distill.train).epochs for m in distill.methods}
    if bench is not None:
        rates = measured_rates(bench)["train"]
        if all(m in rates for m in distill.methods):
            device = bench.get("device", "this machine")
            return ({m: images * epochs[m] * rates[m] for m in distill.methods},
                    f"results/bench.json ({device}): seconds per image-step x images x epochs")
    steps = distill.attack.steps
    return ({m: float(images * epochs[m] * (steps + 1)) for m in distill.methods},
            "no results/bench.json with every method: images x epochs x (attack steps + 1)")


def read_bench(root: Path) -> dict[str, Any] | None:
    path = root / "results" / "bench.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def dvc_state(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """``(deps, stale)`` of the project at ``root``: each stage's address -> the addresses of the
    stages it depends on, and the addresses ``dvc status`` reports."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        deps = {stage.addressing: {dep.addressing for dep in graph.successors(stage)} for stage in graph.nodes}
        stale = set(repo.status())
    return deps, stale


def make_plan(deps: dict[str, set[str]], stale: Iterable[str], costs: dict[str, float], cost_source: str) -> Plan:
    """The plan over the stage graph ``deps`` (address -> addresses it depends on) given DVC's
    ``stale`` addresses and the cost of each method's students (pure: no DVC)."""
    stale = set(stale)
    unknown = stale - set(deps)
    if unknown:
        raise ValueError(f"stale stages not in the graph: {sorted(unknown)}")
    planned: set[str] = set()
    for stage in _topological(deps):
        if stage in stale or any(d in planned and d not in CONSTANT_OUTPUT for d in deps[stage]):
            planned.add(stage)
    waves: dict[str, int] = {}
    items: list[Item] = []
    for stage in _topological(deps):
        if stage not in planned:
            continue
        after = tuple(sorted(d for d in deps[stage] if d in planned))
        waves[stage] = 1 + max((waves[d] for d in after), default=-1)
        key = matrix_key(stage)
        cost = costs.get(key[0], 0.0) if key and kind_of(stage) == "student" else 0.0
        items.append(Item(stage, kind_of(stage), after, cost, waves[stage], stage in stale))
    items.sort(key=lambda i: (i.wave, *order_key(i)))
    return Plan(tuple(items), tuple(sorted(set(deps) - planned)), cost_source)


def build_plan(root: Path, params: Params) -> Plan:
    """The plan of the project at ``root`` as DVC sees it now."""
    deps, stale = dvc_state(root)
    costs, source = student_costs(params, read_bench(root))
    return make_plan(deps, stale, costs, source)


def _topological(deps: dict[str, set[str]]) -> list[str]:
    """Every stage after the stages it depends on (ties by name, for a stable plan)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(stage: str) -> None:
        if stage in seen:
            return
        seen.add(stage)
        for dep in sorted(deps[stage]):
            visit(dep)
        done.append(stage)

    for stage in sorted(deps):
        visit(stage)
    return done
