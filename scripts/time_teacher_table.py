"""Time RSLAD's training step with the teacher's clean logits live vs gathered from the table, side by side.

The quick profile's shapes (conf/profile/quick.yaml): a mini_cnn student, a small_cnn teacher, batch 128,
Fashion-MNIST-shaped 1 x 28 x 28 images (generated: the time does not depend on the pixels), crop padding 2
and flips (50 views), PGD-5 at eps 24/255. Live and table steps alternate (A/B, then B/A) on the same batch,
each with its own student and optimiser; the ratio is the median of the per-pair ratios. Also the table's
build time over all images. Run: PYTHONPATH=. python scripts/time_teacher_table.py [--pairs 20] [--images 4000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from absld.data import TensorLoader
from absld.methods import MethodContext, build_method
from absld.models import build_model
from absld.params import AttackConfig, RsladConfig
from absld.runtime import AtPrecision, Runtime
from absld.train.loop import method_loss
from absld.train.teacher_table import build_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=4000)
    args = parser.parse_args()
    rt = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
    rng = np.random.default_rng(0)
    labels = np.arange(args.images) % 10
    images = rng.integers(0, 255, (args.images, 1, 28, 28), dtype=np.uint8)
    loader = TensorLoader(images, labels, batch_size=128, shuffle=True, drop_last=True, crop_padding=2, flip=True,
                          seed=0)
    torch.manual_seed(0)
    teacher = AtPrecision(build_model("small_cnn", num_classes=10, in_channels=1).eval().requires_grad_(False),
                          rt, bf16=False).eval()
    started = time.perf_counter()
    table = build_table(teacher, loader, 10)
    build = time.perf_counter() - started
    ctx = MethodContext(num_classes=10, attack=AttackConfig(eps="24/255", step="6/255", steps=5), teacher=teacher,
                        kl_reduction="batchmean")
    method = build_method("rslad", RsladConfig(), ctx)
    runs = {}
    for name in ("live", "table"):
        torch.manual_seed(1)
        student = build_model("mini_cnn", num_classes=10, in_channels=1)
        runs[name] = (student, torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9))

    def step(name: str, batch) -> float:
        student, optimizer = runs[name]
        begin = time.perf_counter()
        out = method_loss(student, method, teacher if name == "live" else table, batch, rt)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - begin

    times = {"live": [], "table": []}
    ratios = []
    batches = iter(())
    epoch = 0
    for pair in range(args.warmup + args.pairs):
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            loader.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        order = ("live", "table") if pair % 2 == 0 else ("table", "live")
        got = {name: step(name, batch) for name in order}
        if pair >= args.warmup:
            for name in got:
                times[name].append(got[name])
            ratios.append(got["live"] / got["table"])
    live, tab = statistics.median(times["live"]), statistics.median(times["table"])
    q = statistics.quantiles(ratios, n=4)
    print(f"table build: {len(images)} images x {table.logits.shape[1]} views in {build:.1f} s "
          f"({len(images) * table.logits.shape[1] / build:.0f} teacher images/s)")
    print(f"step (median of {args.pairs} interleaved pairs): live {live * 1e3:.0f} ms, table {tab * 1e3:.0f} ms; "
          f"live/table per pair: median {statistics.median(ratios):.2f} (quartiles {q[0]:.2f}-{q[2]:.2f})")


if __name__ == "__main__":
    main()
