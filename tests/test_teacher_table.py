"""The sync-free loader (a whole epoch's random numbers drawn up front) and the teacher's clean-logit
table (absld/train/teacher_table.py): same batches as the per-batch draws, same logits as the live
forward up to rounding, the same training either way, and a cache whose presence changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from absld.data import Batch, TensorLoader
from absld.distributed import shard
from absld.methods import MethodContext, build_method
from absld.models import build_model
from absld.params import AdaadConfig, AttackConfig, RsladConfig, TrainConfig
from absld.runtime import Runtime
from absld.train.loop import fit
from absld.train.teacher_table import (LogitTable, build_table, cached_table, choose, n_views, read_cached,
                                       table_key, write_cached)

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
TOLERANCE = 1e-5  # absolute, float32 logits: the table vs the live forward


def _images(n: int = 45, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    return rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8), labels


def _per_batch_reference(loader: TensorLoader):
    """Today's loader before this change, verbatim in its draws: per batch dy, dx, then the flip
    mask on the CPU generator, each copied to the device, the gathering there."""
    generator = torch.Generator().manual_seed(loader.seed * 1_000_003 + loader.epoch)
    n = len(loader.labels)
    order = torch.randperm(n, generator=generator) if loader.shuffle else torch.arange(n)
    p = loader.crop_padding
    for b in range(len(loader)):
        idx = order[b * loader.batch_size : (b + 1) * loader.batch_size]
        x = loader.images[idx].float().div_(255)
        batch, _, height, width = x.shape
        dy = dx = mask = None
        if p > 0:
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (batch,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (batch,), generator=generator)
            rows = dy[:, None] + torch.arange(height)
            cols = dx[:, None] + torch.arange(width)
            x = padded[torch.arange(batch)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                       rows[:, None, :, None], cols[:, None, None, :]]
        if loader.flip:
            mask = torch.rand(batch, generator=generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        yield x, loader.labels[idx], idx, dy, dx, mask


@pytest.mark.parametrize("padding,flip,drop_last", [(2, True, False), (0, True, False), (3, False, True),
                                                    (1, True, True)])
def test_the_loader_yields_bitwise_the_batches_of_per_batch_draws_and_says_what_it_drew(padding, flip, drop_last):
    images, labels = _images()
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, drop_last=drop_last,
                          crop_padding=padding, flip=flip, seed=3)
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        batches = list(loader)
        reference = list(_per_batch_reference(loader))
        assert len(batches) == len(reference) == len(loader)
        for batch, (x, y, idx, dy, dx, mask) in zip(batches, reference):
            assert torch.equal(batch.x, x) and torch.equal(batch.y, y) and torch.equal(batch.index, idx)
            side = 2 * padding + 1
            expected_crop = dy * side + dx if dy is not None else torch.zeros(len(y), dtype=torch.long)
            expected_flip = mask if mask is not None else torch.zeros(len(y), dtype=torch.bool)
            assert torch.equal(batch.crop, expected_crop) and torch.equal(batch.flip, expected_flip)


def test_without_augmentation_a_batch_says_none_and_a_shard_keeps_each_samples_views():
    images, labels = _images(20)
    plain = next(iter(TensorLoader(images, labels, batch_size=8)))
    assert plain.crop is None and plain.flip is None
    batch = next(iter(TensorLoader(images, labels, batch_size=8, crop_padding=2, flip=True, seed=1)))
    part = shard(batch, 1, 2)
    assert torch.equal(part.crop, batch.crop[1::2]) and torch.equal(part.flip, batch.flip[1::2])
    assert torch.equal(part.index, batch.index[1::2])


def _teacher(seed: int = 7, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny_cnn", num_classes=classes, in_channels=3).eval().requires_grad_(False)


@pytest.mark.parametrize("padding,flip", [(2, True), (0, True), (1, False)])
def test_the_table_gives_the_live_teacher_logits_over_a_whole_epoch(padding, flip):
    images, labels = _images(24, size=12)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=padding, flip=flip, seed=2)
    teacher = _teacher()
    table = build_table(teacher, loader, num_classes=4)
    assert table.logits.shape == (24, n_views(loader), 4) and table.fits(loader)
    loader.set_epoch(1)
    worst = 0.0
    with torch.no_grad():
        for batch in loader:
            worst = max(worst, float((table.lookup(batch) - teacher(batch.x)).abs().max()))
    assert worst <= TOLERANCE


def _rslad_run(teacher_table: bool, steps_epochs: int = 2):
    images, labels = _images(48, size=12)
    teacher = _teacher()
    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=4, in_channels=3)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=1, flip=True, seed=0)
    ctx = MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=2), teacher=teacher)
    method = build_method("rslad", RsladConfig(), ctx)
    table = build_table(teacher, loader, num_classes=4) if teacher_table else None
    cfg = TrainConfig(epochs=steps_epochs, batch_size=16, lr=0.05, milestones=[])
    torch.manual_seed(1)
    return fit(student, method, loader, cfg, CPU, teacher_table=table)


def test_a_short_rslad_run_has_the_same_losses_and_weights_with_the_table_as_live():
    live, tabled = _rslad_run(False), _rslad_run(True)
    assert [row["train_loss"] for row in live.history] == pytest.approx(
        [row["train_loss"] for row in tabled.history], abs=1e-5)
    for key, value in live.final_state.items():
        assert torch.allclose(value.float(), tabled.final_state[key].float(), atol=1e-4), key


def test_a_table_of_another_loader_is_refused():
    images, labels = _images(48, size=12)
    other = TensorLoader(images[:32], labels[:32], batch_size=16, crop_padding=2, flip=True)
    teacher = _teacher()
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=0)
    ctx = MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=1), teacher=teacher)
    with pytest.raises(ValueError, match="teacher_table"):
        fit(build_model("tiny_cnn", num_classes=4, in_channels=3), build_method("rslad", RsladConfig(), ctx),
            loader, TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), CPU,
            teacher_table=build_table(teacher, other, num_classes=4))


def _teacher_inputs(alpha: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every input the teacher saw during one AdaAD epoch, and that epoch's clean batches."""
    images, labels = _images(32, size=12)
    teacher = _teacher()
    seen: list[torch.Tensor] = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=0)
    ctx = MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=1), teacher=teacher)
    method = build_method("adaad", AdaadConfig(alpha=alpha), ctx)
    fit(build_model("tiny_cnn", num_classes=4, in_channels=3), method, loader,
        TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), CPU)
    loader.set_epoch(1)
    return seen, [batch.x for batch in loader]


def test_adaad_with_alpha_one_never_runs_the_teacher_on_the_clean_batch():
    seen, clean = _teacher_inputs(alpha=1.0)
    assert seen and not any(torch.equal(a, b) for a in seen for b in clean)
    seen, clean = _teacher_inputs(alpha=0.5)  # the (1 - alpha) term reads them: then it must
    assert sum(torch.equal(a, b) for a in seen for b in clean) == len(clean)


def test_auto_builds_a_table_only_where_it_fits_the_budget_and_pays_for_itself():
    images, labels = _images(40, size=12)
    loader = TensorLoader(images, labels, batch_size=16, crop_padding=4, flip=True)
    assert n_views(loader) == 162
    size_gib = 40 * 162 * 10 * 4 / 2**30
    assert choose("auto", loader, 10, epochs=300, budget_gib=2 * size_gib)[0] == "table"
    assert choose("auto", loader, 10, epochs=300, budget_gib=size_gib / 2)[0] == "live"
    assert choose("auto", loader, 10, epochs=161, budget_gib=2 * size_gib)[0] == "live"
    assert choose("auto", loader, 10, epochs=162, budget_gib=2 * size_gib)[0] == "table"
    assert choose("table", loader, 10, epochs=1, budget_gib=0)[0] == "table"
    assert choose("live", loader, 10, epochs=300, budget_gib=100)[0] == "live"


def test_the_cache_round_trips_and_a_damaged_or_foreign_file_is_rebuilt(tmp_path):
    images, labels = _images(20, size=12)
    loader = TensorLoader(images, labels, batch_size=8, crop_padding=1, flip=True)
    teacher = _teacher()
    key = table_key("a" * 64, loader, bf16=False, batch_size=8)
    assert key != table_key("b" * 64, loader, bf16=False, batch_size=8)
    assert key != table_key("a" * 64, loader, bf16=True, batch_size=8)
    changed = images.copy()
    changed[3, 0, 0, 0] ^= 1
    assert key != table_key("a" * 64, TensorLoader(changed, labels, batch_size=8, crop_padding=1, flip=True),
                            bf16=False, batch_size=8)
    path = tmp_path / f"{key}.pt"
    table = build_table(teacher, loader, 4)
    write_cached(path, key, table)
    read, _ = read_cached(path, key, torch.device("cpu"))
    assert read is not None and torch.equal(read.logits, table.logits) and read.n_flips == 2
    assert read_cached(path, "other", torch.device("cpu"))[0] is None
    saved = torch.load(path, weights_only=True)
    saved["logits"][0, 0, 0] += 1  # damaged bytes: the checksum no longer holds
    torch.save(saved, path)
    assert read_cached(path, key, torch.device("cpu"))[0] is None
    notes: list[str] = []
    rebuilt = cached_table(teacher, "a" * 64, loader, 4, cache=lambda k: tmp_path / f"{k}.pt", bf16=False,
                           echo=notes.append)
    assert torch.equal(rebuilt.logits, table.logits) and any("rebuilding" in n for n in notes)
    assert read_cached(path, key, torch.device("cpu"))[0] is not None  # rewritten whole


def test_lookup_reads_the_view_of_each_samples_crop_and_flip():
    logits = torch.arange(3 * 4 * 1, dtype=torch.float32).reshape(3, 4, 1)  # 3 images, 2 crops x 2 flips
    table = LogitTable(logits, n_flips=2)
    batch = Batch(x=torch.zeros(3, 1, 1, 1), y=torch.zeros(3, dtype=torch.long), index=torch.tensor([2, 0, 1]),
                  crop=torch.tensor([1, 0, 1]), flip=torch.tensor([False, True, True]))
    assert table.lookup(batch).flatten().tolist() == [2 * 4 + 2, 0 * 4 + 1, 1 * 4 + 3]


@pytest.mark.slow
def test_the_distill_stage_writes_the_same_bytes_with_and_without_the_cached_table(tmp_path, monkeypatch):
    """The cache under scratch/ is shared by the students of one teacher; whether it existed must not
    show in any DVC output (else DVC would see a new student), and DVC never names it."""
    import shutil

    import yaml

    from tests.conftest import REPO, profile_params_text
    from tests.test_stages import _tracked_bytes, invoke, set_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    set_params(tmp_path, **{"distill.teacher_logits": "table", "distill.train.epochs": 1, "distill.select": "last",
                            "data.augment.crop_padding": 1, "teacher.train.epochs": 1, "teacher.train.milestones": []})
    assert invoke("prepare").exit_code == 0 and invoke("teacher").exit_code == 0
    runs, outputs = [], []
    for _ in range(2):
        for directory in ("models/students", "results/distill", "plots/distill", "checkpoints/distill", "logs"):
            shutil.rmtree(tmp_path / directory, ignore_errors=True)
        done = invoke("distill", "--method", "rslad", "--seed", "0")
        assert done.exit_code == 0, done.output
        runs.append(_tracked_bytes(tmp_path))
        outputs.append(done.output)
    assert "built the table" in outputs[0] and "read the cached table" in outputs[1]
    assert len(list((tmp_path / "scratch/teacher_logits").glob("*.pt"))) == 1
    assert runs[0].keys() == runs[1].keys() and "models/students/rslad/seed0.pt" in runs[0]
    assert [name for name in runs[0] if runs[0][name] != runs[1][name]] == []
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    named = [str(path) for stage in stages.values() for key in ("deps", "outs")
             for entry in stage.get(key, []) for path in (entry if isinstance(entry, dict) else [entry])]
    assert named and not [path for path in named if path.startswith("scratch")]


def test_with_a_table_the_teacher_never_runs_during_rslad_training():
    images, labels = _images(32, size=12)
    teacher = _teacher()
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=1, flip=True, seed=0)
    table = build_table(teacher, loader, num_classes=4)
    calls: list[int] = []
    teacher.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    ctx = MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=1), teacher=teacher)
    fit(build_model("tiny_cnn", num_classes=4, in_channels=3), build_method("rslad", RsladConfig(), ctx), loader,
        TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), CPU, teacher_table=table)
    assert calls == []
