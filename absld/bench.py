"""How fast the pipeline trains and attacks, against a loop with the reference scripts' structure.

``absld bench`` (``pipeline/bench.py``) times, on random images of the dataset's shape:

- one **training step** of each method exactly as :func:`absld.train.fit` runs it (our batch
  loader with its augmentation on whole batches, :func:`absld.train.method_loss`, backward, SGD
  step), with the runtime's precision (fp32, or bf16 autocast + channels_last: ``runtime.amp`` on
  CUDA, ``runtime.cpu_bf16`` on the CPU) and in fp32;
- the same step in a **reference loop** with the structure of the official training scripts
  (RSLAD's, ABSLD's, Madry's PGD-AT): a ``torch.utils.data.DataLoader`` with two worker processes
  over PIL images and per-image transforms (random crop with padding, horizontal flip,
  ``ToTensor``), fp32, the attack and loss written out inline, and ABSLD's per-sample Python loops
  (each sample's teacher logits divided by its class temperature, each sample's loss added to its
  class risk with ``.item()``). It exists for ``absld``, ``rslad`` and ``sat`` (and their names
  are the methods it stands for); the other methods are timed without one;
- every attack of the evaluation on the model in eval mode. FGSM, PGD and CW take the same time
  on any model; AutoAttack only keeps attacking the samples it has not broken yet, so on these
  untrained models (most samples misclassified from the start) it is far faster than on a
  trained one.

Each figure is images per second: the batch size over the median of ``repeats`` timed steps after
``warmup`` untimed ones (CUDA: timed with CUDA events). The models are untrained (speed does not
depend on the weights).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .params import EvaluateConfig, Params, RuntimeConfig
from .data import DATASETS as DATASET_SPECS, TensorLoader
from .evaluate.cascade import build_attacks, start_noise
from .methods import METHODS, MethodContext, build_method
from .models import build_model
from .runtime import Runtime, setup
from .train.loop import method_loss

REFERENCE_METHODS = ("absld", "rslad", "sat")
"""The methods the reference loop stands for."""


@dataclass(frozen=True)
class BenchSettings:
    """What is timed: models, batch size, how many steps."""

    student: str
    teacher: str
    batch_size: int
    warmup: int
    repeats: int
    seed: int = 0


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds taken by one call (CUDA: events around it, synchronised)."""

    def timed(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return timed


def images_per_second(step: Callable[[], Any], batch_size: int, warmup: int, repeats: int,
                      device: torch.device) -> float:
    """``batch_size`` over the median time of ``repeats`` calls of ``step`` after ``warmup`` calls."""
    timed = _timer(device)
    for _ in range(warmup):
        timed(step)
    return batch_size / statistics.median(timed(step) for _ in range(repeats))


def random_data(params: Params, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images of the dataset's shape (N, C, H, W) and labels covering every class."""
    spec = DATASET_SPECS[params.data.dataset]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % spec.num_classes
    rng.shuffle(labels)
    return images, labels


def _models(params: Params, settings: BenchSettings, rt: Runtime, with_teacher: bool) -> tuple[nn.Module, nn.Module | None]:
    spec = DATASET_SPECS[params.data.dataset]
    torch.manual_seed(settings.seed)
    student = rt.to_device(build_model(settings.student, num_classes=spec.num_classes, in_channels=spec.image_shape[0]))
    teacher = None
    if with_teacher:
        teacher = build_model(settings.teacher, num_classes=spec.num_classes, in_channels=spec.image_shape[0])
        teacher = rt.to_device(teacher).eval().requires_grad_(False)
    return student, teacher


def _optimizer(model: nn.Module, params: Params) -> torch.optim.Optimizer:
    cfg = params.distill.train
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def ours_train_step(params: Params, method_name: str, settings: BenchSettings, rt: Runtime) -> float:
    """Images/s of one training step of ``method_name`` as :func:`absld.train.fit` runs it."""
    method_cfg = params.distill.method_config(method_name)
    uses_teacher = METHODS[method_name].uses_teacher
    student, teacher = _models(params, settings, rt, uses_teacher)
    clean_teacher = None
    if METHODS[method_name].uses_clean_teacher:  # B-MTARD: a random teacher_clean.model.arch as well
        spec = DATASET_SPECS[params.data.dataset]
        clean_teacher = build_model(params.teacher_clean.model.arch, num_classes=spec.num_classes,
                                    in_channels=spec.image_shape[0])
        clean_teacher = rt.to_device(clean_teacher).eval().requires_grad_(False)
    method = build_method(method_name, method_cfg, MethodContext(
        num_classes=DATASET_SPECS[params.data.dataset].num_classes, attack=params.distill.attack, teacher=teacher,
        clean_teacher=clean_teacher, kl_reduction=params.distill.kl_reduction))
    optimizer = _optimizer(student, params)
    steps = settings.warmup + settings.repeats
    images, labels = random_data(params, settings.batch_size * steps, settings.seed)
    augment = params.data.augment
    loader = TensorLoader(images, labels, batch_size=settings.batch_size, device=rt.device, shuffle=True,
                          crop_padding=augment.crop_padding, flip=augment.flip, seed=settings.seed,
                          channels_last=rt.channels_last)
    batches = _forever(loader)

    def step() -> None:
        out = method_loss(student, method, method.logits_teacher, next(batches), rt)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return images_per_second(step, settings.batch_size, settings.warmup, settings.repeats, rt.device)


def _forever(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        epoch += 1
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


# ----------------------------------------------------------------------------------------------
# the reference loop: the official scripts' structure
class _PilDataset(torch.utils.data.Dataset):
    """PIL images with torchvision's per-image transforms, as the official scripts load CIFAR."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, crop_padding: int, flip: bool) -> None:
        from PIL import Image
        from torchvision import transforms

        mode = "L" if images.shape[1] == 1 else "RGB"
        self.images = [Image.fromarray(image.squeeze(0) if mode == "L" else image.transpose(1, 2, 0), mode=mode)
                       for image in images]
        self.labels = labels.tolist()
        steps = [transforms.RandomCrop(images.shape[-1], padding=crop_padding)] if crop_padding else []
        steps += [transforms.RandomHorizontalFlip()] if flip else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), self.labels[index]


def _reference_attack_kl(student: nn.Module, x: Tensor, target: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """RSLAD/ABSLD's inner maximisation as their scripts write it: start x + 0.001 N(0, I), sign steps
    on the summed KL to the teacher's soft labels, student in eval mode."""
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.kl_div(F.log_softmax(student(x_adv), dim=1), target, reduction="sum")
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    student.train()
    return x_adv.detach()


def _reference_attack_ce(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """Madry's PGD-AT attack as its script writes it: uniform start, sign steps on CE."""
    model.eval()
    x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return x_adv.detach()


def reference_train_step(params: Params, method_name: str, settings: BenchSettings, device: torch.device) -> float:
    """Images/s of one training step of ``method_name`` in the reference loop (fp32)."""
    if method_name not in REFERENCE_METHODS:
        raise ValueError(f"the reference loop covers {', '.join(REFERENCE_METHODS)}, not {method_name!r}")
    rt = Runtime(device=device, amp=False, channels_last=False, progress=False)
    student, teacher = _models(params, settings, rt, method_name != "sat")
    optimizer = _optimizer(student, params)
    spec = DATASET_SPECS[params.data.dataset]
    steps = settings.warmup + settings.repeats
    images, labels = random_data(params, settings.batch_size * steps, settings.seed)
    augment = params.data.augment
    loader = torch.utils.data.DataLoader(_PilDataset(images, labels, augment.crop_padding, augment.flip),
                                         batch_size=settings.batch_size, shuffle=True, num_workers=2,
                                         drop_last=True)
    batches = _forever(loader)
    attack = params.distill.attack
    tau_adv = [1.0] * spec.num_classes  # ABSLD's temperatures: Python lists, indexed per sample
    tau_nat = [1.0] * spec.num_classes
    risk_adv = [0.0] * spec.num_classes
    risk_nat = [0.0] * spec.num_classes

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        if method_name == "sat":
            x_adv = _reference_attack_ce(student, x, y, attack.eps, attack.step, attack.steps)
            loss = F.cross_entropy(student(x_adv), y)
        else:
            with torch.no_grad():
                logits = teacher(x)
            if method_name == "absld":
                scaled_adv = torch.stack([logits[i] / tau_adv[int(y[i])] for i in range(len(y))])
                scaled_nat = torch.stack([logits[i] / tau_nat[int(y[i])] for i in range(len(y))])
                p_adv, p_nat = F.softmax(scaled_adv, dim=1), F.softmax(scaled_nat, dim=1)
            else:
                p_adv = p_nat = F.softmax(logits, dim=1)
            x_adv = _reference_attack_kl(student, x, p_adv, attack.eps, attack.step, attack.steps)
            out_adv, out_nat = student(x_adv), student(x)
            kl_adv = F.kl_div(F.log_softmax(out_adv, dim=1), p_adv, reduction="sum") / len(y)
            kl_nat = F.kl_div(F.log_softmax(out_nat, dim=1), p_nat, reduction="sum") / len(y)
            loss = 5 / 6 * kl_adv + 1 / 6 * kl_nat
            if method_name == "absld":
                ce_adv = F.cross_entropy(out_adv, y, reduction="none")
                ce_nat = F.cross_entropy(out_nat, y, reduction="none")
                for i in range(len(y)):
                    risk_adv[int(y[i])] += ce_adv[i].item()
                    risk_nat[int(y[i])] += ce_nat[i].item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    try:
        return images_per_second(step, settings.batch_size, settings.warmup, settings.repeats, device)
    finally:
        batches.close()  # ends the DataLoader's iterator, and with it its workers


# ----------------------------------------------------------------------------------------------
# attacks
def attack_speeds(params: Params, evaluate: EvaluateConfig, settings: BenchSettings, rt: Runtime) -> dict[str, float]:
    """Images/s of each attack of ``evaluate.attacks`` (and clean) on the student in eval mode, with
    the evaluation's precision (fp32 unless evaluate.amp), one batch of ``settings.batch_size``."""
    student, _ = _models(params, settings, rt, with_teacher=False)
    student.eval().requires_grad_(False)
    images, labels = random_data(params, settings.batch_size, settings.seed)
    x = torch.as_tensor(images, device=rt.device).float().div_(255)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.as_tensor(labels, device=rt.device)
    out: dict[str, float] = {}
    for spec in build_attacks(evaluate, rt.device):
        noise = None
        if spec.noise_kind is not None:
            noise = start_noise(spec.noise_kind, tuple(x.shape), seed=evaluate.seed, name=spec.name).to(rt.device)

        def run(spec=spec, noise=noise) -> None:
            with rt.autocast() if spec.autocast else contextlib.nullcontext():
                x_adv = spec.run(student, x, y, noise)
            with torch.no_grad():
                student(x_adv).argmax(dim=1)

        repeats = 1 if spec.name == "aa" else settings.repeats
        out[spec.name] = images_per_second(run, settings.batch_size, 0 if spec.name == "aa" else settings.warmup,
                                           repeats, rt.device)
    return out


def fast_runtime(cfg: RuntimeConfig) -> RuntimeConfig:
    """``cfg`` with the fast path on: bf16 autocast and channels_last (CUDA: amp; CPU: cpu_bf16)."""
    return cfg.model_copy(update={"amp": True, "channels_last": True, "cpu_bf16": True})


def fp32_runtime(cfg: RuntimeConfig) -> RuntimeConfig:
    return cfg.model_copy(update={"amp": False, "channels_last": False, "cpu_bf16": False})


def run_bench(params: Params, methods: list[str], settings: BenchSettings,
              on_result: Callable[[str, str, dict[str, Any]], None] = lambda *_: None) -> dict[str, Any]:
    """Every figure of ``absld bench`` (the ``results/bench.json`` layout)."""
    fast, fp32 = setup(fast_runtime(params.runtime)), setup(fp32_runtime(params.runtime))
    train: dict[str, dict[str, Any]] = {}
    for name in methods:
        row: dict[str, Any] = {"ours_img_s": ours_train_step(params, name, settings, fast),
                               "ours_fp32_img_s": ours_train_step(params, name, settings, fp32)}
        if name in REFERENCE_METHODS:
            row["reference_img_s"] = reference_train_step(params, name, settings, fp32.device)
            row["ratio"] = row["ours_img_s"] / row["reference_img_s"]
            row["ratio_fp32"] = row["ours_fp32_img_s"] / row["reference_img_s"]
        else:
            row["reference_img_s"] = row["ratio"] = row["ratio_fp32"] = None
        train[name] = row
        on_result("train_step", name, row)
    attacks = attack_speeds(params, params.evaluate, settings, fp32)
    for name, value in attacks.items():
        on_result("attacks", name, {"img_s": value})
    return {
        "device": _device_name(fast.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {"student": settings.student, "teacher": settings.teacher, "batch_size": settings.batch_size,
                     "warmup": settings.warmup, "repeats": settings.repeats, "dataset": params.data.dataset,
                     "attack_steps": params.distill.attack.steps,
                     "fast_path": "bf16 autocast + channels_last" + (" (runtime.cpu_bf16)" if fast.device.type == "cpu"
                                                                     else " (runtime.amp)")},
        "train_step": train,
        "attacks": {name: {"img_s": value} for name, value in attacks.items()},
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}"
