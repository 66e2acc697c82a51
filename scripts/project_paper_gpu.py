"""The paper's table in GPU-hours from counted FLOPs, without a GPU.

Counts, with torch's own FLOP counter (``torch.utils.flop_counter``: convolutions and matmuls,
forward and backward), one training step of every method of the paper profile on its models
(ResNet-18 student, WRN-34-10 teacher, B-MTARD's ResNet-56 clean teacher), phase by phase as the
training loop runs it (``absld.bench.step_flops``), and each evaluation attack's passes on the
student and the teacher. Then divides by an assumed device rate: ``--peak-bf16`` and
``--peak-tf32`` (TFLOP/s, dense) times ``--utilization``:

- the student's phases (attack, loss, backward) under bf16 autocast (``runtime.amp``), at the bf16
  rate (AdaAD's and IAD's teacher passes inside the attack run in float32, TF32 on CUDA: counted
  at the bf16 rate, an underestimate for those two);
- the teacher's clean forward in float32 (TF32 on CUDA; ``distill.teacher_amp`` off): every step
  (``distill.teacher_logits: live``), or once per teacher over every image x crop x flip
  (``table``, what ``auto`` picks for the paper: 162 views; the 7+ students of one teacher share it);
- the evaluation in float32 (TF32) at the TF32 rate; standard AutoAttack as an upper bound by its
  iteration budget (APGD-CE 100, APGD-T 9 x 100, FAB-T 9 x 100 gradient steps, Square 5,000
  forwards: what a sample that survives every attack costs; robust models are mostly such samples
  at eps 8/255);
- not counted: elementwise work (BatchNorm, activations, the optimiser), the per-epoch selection
  and validation passes, data loading, and the imported TRADES teacher's training.

The FLOPs are counted on the meta device (no memory, no time); run as
``python scripts/project_paper_gpu.py [--utilization 0.35] [--output results/paper_projection.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absld.bench import BenchSettings, _GlobalOnly, _model, ours_step, step_flops  # noqa: E402
from absld.bench_projection import paper_workload  # noqa: E402
from absld.evaluate.cascade import build_attacks  # noqa: E402
from absld.methods import MethodContext, Natural  # noqa: E402
from absld.params import AttackConfig, load_profile  # noqa: E402
from absld.runtime import Runtime  # noqa: E402

H100_BF16, H100_TF32 = 989.4, 494.7
"""NVIDIA H100 SXM5 dense tensor-core peaks (TFLOP/s, the datasheet's figures without sparsity)."""
BATCH = 4
VIEWS = 162  # (2 * 4 + 1) ** 2 crop offsets x 2 flips: the teacher table of the paper's augmentation


class MetaRuntime(Runtime):
    """The runtime on the meta device, where autocast does not exist (FLOPs do not depend on it)."""

    def autocast(self):
        return contextlib.nullcontext()

    def precision(self, bf16: bool):
        return contextlib.nullcontext()


def _counted(fn) -> float:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # one global bucket: the per-module tracker fails inside autograd.grad
    with counter:
        fn()
    return float(counter.get_total_flops())


def attack_flops(paper, arch: str, rt: Runtime) -> dict[str, float]:
    """FLOPs per image of each evaluation attack (and the scoring forward) on ``arch``; AutoAttack
    as its iteration budget's upper bound from the forward and gradient-step FLOPs."""
    model = _model(paper, arch, rt, 0).eval().requires_grad_(False)
    x = torch.rand(BATCH, 3, 32, 32, device=rt.device)
    y = torch.zeros(BATCH, dtype=torch.long, device=rt.device)
    forward = _counted(lambda: model(x)) / BATCH
    out = {}
    for spec in build_attacks(paper.evaluate, rt.device):
        if spec.name == "aa":
            continue
        noise = torch.zeros_like(x) if spec.noise_kind is not None else None
        out[spec.name] = _counted(lambda spec=spec, noise=noise: spec.run(model, x, y, noise)) / BATCH + forward  # + scoring
    pgd = paper.evaluate.pgd.steps
    name = next(n for n in out if n.startswith("pgd"))  # the record's name (``pgd``, or with its steps)
    grad_step = (out[name] - 2 * forward) / pgd  # one step: a forward and the input gradient
    out["aa_upper_bound"] = (100 + 9 * 100 + 9 * 100) * grad_step + 5000 * forward + forward
    out["forward"] = forward
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-bf16", type=float, default=H100_BF16, help="dense bf16 TFLOP/s (H100 SXM)")
    parser.add_argument("--peak-tf32", type=float, default=H100_TF32, help="dense TF32 TFLOP/s (H100 SXM)")
    parser.add_argument("--utilization", type=float, default=0.35, help="achieved share of the peaks")
    parser.add_argument("--output", type=Path, default=Path("results/paper_projection.json"))
    args = parser.parse_args()
    if not (0 < args.utilization <= 1) or args.peak_bf16 <= 0 or args.peak_tf32 <= 0:
        parser.error("--utilization must be in (0, 1] and the peaks > 0")
    paper = load_profile("paper")
    rt = MetaRuntime(device=torch.device("meta"), amp=False, channels_last=False, progress=False)
    settings = BenchSettings(paper.distill.student.arch, paper.teacher.model.arch, BATCH, 0, 1, 3,
                             projection=False, reference_workers=0)
    work = paper_workload(paper)
    bf16, tf32 = args.peak_bf16 * 1e12 * args.utilization, args.peak_tf32 * 1e12 * args.utilization
    rows, teacher_forward = [], 0.0
    for method, run in work.students.items():
        phases = {k: v / BATCH for k, v in step_flops(ours_step(paper, method, settings, rt, steps=1)).items()}
        teacher_forward = max(teacher_forward, phases["teacher"])
        student = sum(v for k, v in phases.items() if k != "teacher")
        image_steps = run.images * run.epochs * run.runs
        rows.append({"run": method, "image_steps": image_steps, "student_gflop": student / 1e9,
                     "teacher_gflop": phases["teacher"] / 1e9,
                     "hours_live": image_steps * (student / bf16 + phases["teacher"] / tf32) / 3600,
                     "hours_table": image_steps * student / bf16 / 3600})
    clean = paper.teacher_clean
    if clean.source == "train":
        natural = Natural(clean, MethodContext(num_classes=10, attack=AttackConfig()))
        phases = step_flops(ours_step(paper, "natural", settings, rt, steps=1, arch=clean.model.arch, method=natural))
        run = work.teachers["teacher_clean"]
        flops = sum(phases.values()) / BATCH
        rows.append({"run": "teacher_clean", "image_steps": run.images * run.epochs, "student_gflop": flops / 1e9,
                     "teacher_gflop": 0.0, "hours_live": run.images * run.epochs * flops / bf16 / 3600,
                     "hours_table": run.images * run.epochs * flops / bf16 / 3600})
    images = work.students[next(iter(work.students))].images
    table_build = images * VIEWS * teacher_forward / tf32 / 3600
    student_attacks = attack_flops(paper, paper.distill.student.arch, rt)
    teacher_attacks = attack_flops(paper, paper.teacher.model.arch, rt)
    evaluation = []
    for name in [*student_attacks]:
        if name == "forward":
            continue
        n = work.aa_images if name == "aa_upper_bound" else work.eval_images
        evaluation.append({"attack": name, "images": n, "student_gflop": student_attacks[name] / 1e9,
                           "teacher_gflop": teacher_attacks[name] / 1e9,
                           "hours": n * (work.student_models * student_attacks[name] + teacher_attacks[name]) / tf32 / 3600})
    train_live = sum(r["hours_live"] for r in rows)
    train_table = sum(r["hours_table"] for r in rows) + table_build
    eval_hours = sum(e["hours"] for e in evaluation)
    eval_without_aa = sum(e["hours"] for e in evaluation if e["attack"] != "aa_upper_bound")
    result = {"assumptions": {"peak_bf16_tflop_s": args.peak_bf16, "peak_tf32_tflop_s": args.peak_tf32,
                              "utilization": args.utilization, "flops": "torch.utils.flop_counter on the meta device, "
                              "convolutions and matmuls only", "seeds": len(paper.seeds)},
              "train": rows, "table_build_hours": table_build, "evaluation": evaluation,
              "train_hours_live": train_live, "train_hours_table": train_table,
              "evaluate_hours": eval_hours, "evaluate_hours_without_aa": eval_without_aa,
              "total_hours_table": train_table + eval_hours}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"at {args.utilization:.0%} of {args.peak_bf16:g} (bf16) / {args.peak_tf32:g} (TF32) TFLOP/s, "
          f"{len(paper.seeds)} seed(s):")
    print("| run | image-steps | student GFLOP/img-step | teacher GFLOP | GPU-h live | GPU-h table |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['image_steps']:,} | {r['student_gflop']:.1f} | {r['teacher_gflop']:.1f} | "
              f"{r['hours_live']:.2f} | {r['hours_table']:.2f} |")
    print(f"| teacher table build ({VIEWS} views, once) | {images * VIEWS:,} | | {teacher_forward / 1e9:.1f} | | "
          f"{table_build:.2f} |")
    print("\n| attack | images | student GFLOP/img | teacher GFLOP/img | GPU-h (all models) |\n|---|---|---|---|---|")
    for e in evaluation:
        print(f"| {e['attack']} | {e['images']:,} | {e['student_gflop']:.1f} | {e['teacher_gflop']:.1f} | "
              f"{e['hours']:.2f} |")
    print(f"\ntraining {train_live:.1f} GPU-h live, {train_table:.1f} with the table; evaluation {eval_hours:.1f} "
          f"({eval_without_aa:.2f} without AutoAttack's upper bound); total {train_table + eval_hours:.1f} -> "
          f"{args.output}")


if __name__ == "__main__":
    main()
