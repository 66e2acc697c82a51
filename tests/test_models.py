"""Specification of absld.models: the registry, normalisation, checkpoints, and the TRADES WRN."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from absld.models import (
    MODELS,
    ModelError,
    ModelName,
    WideResNet,
    build_model,
    checkpoint_meta,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from absld.models.common import adaptive_avg_pool2d
from absld.models.wide_resnet import BasicBlock as WideBasicBlock

# wrn34_10 (48M parameters) is exercised once, through the module-scoped fixture below.
SMALL_ARCHS = sorted(name for name in MODELS if name != "wrn34_10")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def wrn34_10() -> nn.Module:
    torch.manual_seed(0)
    return build_model("wrn34_10", num_classes=10)


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A batch of images in [0, 1]."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def trained_tiny_cnn(**kwargs: object) -> nn.Module:
    """tiny_cnn with non-default BatchNorm statistics (one forward pass in train mode)."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=10, **kwargs)  # type: ignore[arg-type]
    model.train()
    model(images((8, 3, 16, 16), seed=1))
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- registry, shapes


def test_registry_names_are_the_model_name_literal() -> None:
    assert set(MODELS) == set(get_args(ModelName))


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["3x32x32", "1x28x28"])
@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_model_maps_image_batch_to_logits(
    arch: str, shape: tuple[int, int, int], num_classes: int
) -> None:
    model = build_model(arch, num_classes=num_classes, in_channels=shape[0]).eval()
    with torch.no_grad():
        logits = model(images((2, *shape)))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


def test_wrn34_10_maps_cifar_batch_to_logits(wrn34_10: nn.Module) -> None:
    with torch.no_grad():
        logits = wrn34_10.eval()(images((2, 3, 32, 32)))
    assert logits.shape == (2, 10)


def test_wide_resnet_pools_adaptively_so_28x28_grayscale_works() -> None:
    model = WideResNet(16, 2, num_classes=100, in_channels=1).eval()
    with torch.no_grad():
        assert model(images((2, 1, 28, 28))).shape == (2, 100)


def test_constructor_arguments_are_kept_as_plain_attributes() -> None:
    model = build_model("resnet18", num_classes=7, in_channels=1, mean=[0.5], std=[0.25])
    assert (model.arch, model.num_classes, model.in_channels) == ("resnet18", 7, 1)
    assert model.mean == (0.5,) and model.std == (0.25,)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_channels_last_gives_the_same_logits(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    x = images((2, 3, 16, 16))
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_models_run_under_bf16_autocast(arch: str) -> None:
    model = build_model(arch, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images((2, 3, 16, 16)))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("in_size", [5, 7, 8, 14, 32])
def test_adaptive_avg_pool_matches_torch(in_size: int) -> None:
    x = images((2, 3, in_size, in_size + 1))
    torch.testing.assert_close(adaptive_avg_pool2d(x, 4), F.adaptive_avg_pool2d(x, 4))


def test_unknown_arch_raises_model_error_naming_it_and_the_choices() -> None:
    with pytest.raises(ModelError, match="'resnet19'") as error:
        build_model("resnet19", num_classes=10)
    assert "resnet18" in str(error.value) and "\n" not in str(error.value)


def test_non_positive_num_classes_is_rejected() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        build_model("tiny_cnn", num_classes=0)


# --------------------------------------------------------------------------- normalisation


def test_normalising_model_equals_plain_model_fed_normalised_input() -> None:
    with_stats = trained_tiny_cnn(mean=CIFAR_MEAN, std=CIFAR_STD)
    plain = build_model("tiny_cnn", num_classes=10).eval()
    plain.load_state_dict(with_stats.state_dict())
    x = images((4, 3, 16, 16))
    normalised = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(with_stats(x), plain(normalised))


def test_without_mean_and_std_the_input_is_not_changed() -> None:
    model = build_model("tiny_cnn", num_classes=10)
    x = images((2, 3, 8, 8))
    assert model.normalize(x) is x


def test_mean_and_std_are_not_in_state_dict() -> None:
    with_stats = build_model("tiny_cnn", num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
    plain = build_model("tiny_cnn", num_classes=10)
    assert list(with_stats.state_dict()) == list(plain.state_dict())


def test_mean_and_std_buffers_follow_the_model_dtype() -> None:
    model = build_model("tiny_cnn", num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD).double()
    assert model(images((2, 3, 8, 8)).double()).dtype == torch.float64


def test_mean_with_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ModelError, match="in_channels=1"):
        build_model("tiny_cnn", num_classes=10, in_channels=1, mean=CIFAR_MEAN, std=CIFAR_STD)


def test_mean_without_std_is_rejected() -> None:
    with pytest.raises(ModelError, match="both mean and std"):
        build_model("tiny_cnn", num_classes=10, mean=CIFAR_MEAN)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = trained_tiny_cnn(mean=CIFAR_MEAN, std=CIFAR_STD)
    path = save_checkpoint(tmp_path / "model.pt", model)
    x = images((4, 3, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(path)(x), model(x), rtol=0, atol=0)


def test_the_same_model_saved_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    # DVC hashes models/teacher.pt: an identical teacher must not look new (no temporary file
    # name inside the archive), or every downstream stage reruns.
    model = trained_tiny_cnn()
    first = save_checkpoint(tmp_path / "a" / "teacher.pt", model, epoch=3).read_bytes()
    second = save_checkpoint(tmp_path / "b" / "teacher.pt", model, epoch=3).read_bytes()
    assert first == second
    assert b".tmp" not in first


def test_loaded_model_is_in_eval_mode_on_the_cpu(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "model.pt", trained_tiny_cnn().train())
    model = load_checkpoint(path)
    assert not any(module.training for module in model.modules())
    assert {p.device.type for p in model.state_dict().values()} == {"cpu"}


def test_checkpoint_is_a_plain_dict_readable_with_weights_only(tmp_path: Path) -> None:
    model = build_model("tiny_cnn", num_classes=5, in_channels=1, mean=[0.5], std=[0.5])
    path = save_checkpoint(tmp_path / "model.pt", model)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["arch"] == "tiny_cnn"
    assert (checkpoint["num_classes"], checkpoint["in_channels"]) == (5, 1)
    assert checkpoint["mean"] == [0.5] and checkpoint["std"] == [0.5]
    assert set(checkpoint["state_dict"]) == set(model.state_dict())


def test_checkpoint_meta_keeps_extra_entries_and_drops_the_weights(tmp_path: Path) -> None:
    meta = {"epoch": 3, "method": "absld", "tau": torch.ones(10), "history": {"loss": [1.0]}}
    path = save_checkpoint(tmp_path / "model.pt", build_model("tiny_cnn", num_classes=10), **meta)
    stored = checkpoint_meta(path)
    assert "state_dict" not in stored
    assert stored["arch"] == "tiny_cnn" and stored["mean"] is None
    assert (stored["epoch"], stored["method"], stored["history"]) == (3, "absld", {"loss": [1.0]})
    torch.testing.assert_close(stored["tau"], torch.ones(10))


def test_save_creates_parent_directories_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "models" / "students" / "seed0.pt"
    save_checkpoint(path, build_model("tiny_cnn", num_classes=10))
    assert [p.name for p in path.parent.iterdir()] == ["seed0.pt"]


def test_save_rejects_meta_that_weights_only_cannot_load(tmp_path: Path) -> None:
    model = build_model("tiny_cnn", num_classes=10)
    with pytest.raises(ModelError, match="'best_acc'.*numpy"):
        save_checkpoint(tmp_path / "model.pt", model, best_acc=np.float64(0.5))
    with pytest.raises(ModelError, match=r"'args'\['path'\]"):
        save_checkpoint(tmp_path / "model.pt", model, args={"path": Path("x")})
    assert not list(tmp_path.iterdir())


def test_save_rejects_meta_overriding_a_reserved_key(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="num_classes"):
        save_checkpoint(tmp_path / "m.pt", build_model("tiny_cnn", num_classes=10), num_classes=3)


def test_save_unwraps_data_parallel(tmp_path: Path) -> None:
    model = build_model("tiny_cnn", num_classes=10)
    path = save_checkpoint(tmp_path / "model.pt", nn.DataParallel(model))
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert set(stored) == set(model.state_dict())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefix_is_stripped_on_load(tmp_path: Path, prefix: str) -> None:
    model = trained_tiny_cnn()
    prefixed = {f"{prefix}{key}": value for key, value in model.state_dict().items()}
    path = tmp_path / "data_parallel.pt"
    torch.save({"arch": "tiny_cnn", "num_classes": 10, "state_dict": prefixed}, path)
    x = images((2, 3, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(path)(x), model(x), rtol=0, atol=0)


def test_missing_num_batches_tracked_is_filled_with_zero(tmp_path: Path) -> None:
    model = trained_tiny_cnn()
    old_style = {
        key: value
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "pytorch_0_4_0.pt"
    torch.save({"arch": "tiny_cnn", "num_classes": 10, "state_dict": old_style}, path)
    loaded = load_checkpoint(path)
    assert all(
        m.num_batches_tracked.item() == 0
        for m in loaded.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    x = images((2, 3, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_missing_checkpoint_file_raises_model_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_unknown_arch_in_checkpoint_raises_model_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"arch": "vgg16", "num_classes": 10, "state_dict": {}}, path)
    with pytest.raises(ModelError, match="'vgg16'"):
        load_checkpoint(path)


def test_bare_state_dict_raises_model_error_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "model_cifar_wrn.pt"
    torch.save(build_model("tiny_cnn", num_classes=10).state_dict(), path)
    with pytest.raises(ModelError, match="lacks key.*arch.*bare state_dict"):
        load_checkpoint(path)


def test_non_dict_checkpoint_raises_model_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="not a checkpoint.*list"):
        load_checkpoint(path)


def test_unreadable_file_raises_one_line_model_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read checkpoint") as error:
        checkpoint_meta(path)
    assert "\n" not in str(error.value)


def test_weights_of_another_shape_raise_model_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "model.pt", build_model("tiny_cnn", num_classes=10))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["num_classes"] = 100
    torch.save(checkpoint, path)
    with pytest.raises(ModelError, match=r"wrong shapes: linear\.weight"):
        load_checkpoint(path)


def test_load_weights_reports_missing_and_unexpected_keys() -> None:
    state = build_model("tiny_cnn", num_classes=10).state_dict()
    state["extra.weight"] = state.pop("linear.bias")
    with pytest.raises(ModelError, match="missing keys: linear.bias; unexpected keys: extra"):
        load_weights(build_model("tiny_cnn", num_classes=10), state)


# --------------------------------------------------------------------------- TRADES WRN-34-10


def trades_wrn_keys(depth: int = 34, widen_factor: int = 10) -> list[str]:
    """State-dict keys of TRADES' WideResNet (model_cifar_wrn.pt), written from its definition.

    (depth - 4) / 6 BasicBlocks per NetworkBlock; widths 16, 16k, 32k, 64k; each block has
    bn1, conv1, bn2, conv2, and convShortcut when it changes width (only the first block of a
    NetworkBlock can); sub_block1 duplicates block1.
    """
    blocks_per_stage = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    stages = {
        "block1": (widths[0], widths[1]),
        "sub_block1": (widths[0], widths[1]),
        "block2": (widths[1], widths[2]),
        "block3": (widths[2], widths[3]),
    }

    def batch_norm(prefix: str) -> list[str]:
        return [
            f"{prefix}.{name}"
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]

    keys = ["conv1.weight"]
    for stage, (in_planes, out_planes) in stages.items():
        for index in range(blocks_per_stage):
            block = f"{stage}.layer.{index}"
            keys += batch_norm(f"{block}.bn1") + [f"{block}.conv1.weight"]
            keys += batch_norm(f"{block}.bn2") + [f"{block}.conv2.weight"]
            if index == 0 and in_planes != out_planes:
                keys.append(f"{block}.convShortcut.weight")
    keys += batch_norm("bn1") + ["fc.weight", "fc.bias"]
    return keys


def trades_wrn_parameter_count(
    depth: int, widen_factor: int, num_classes: int, *, with_sub_block1: bool = True
) -> int:
    """Parameters of TRADES' WideResNet from its definition (3x3 convs without bias)."""
    blocks_per_stage = (depth - 4) // 6
    w0, w1, w2, w3 = 16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor

    def block(in_planes: int, out_planes: int) -> int:
        bn = 2 * in_planes + 2 * out_planes
        convs = 9 * in_planes * out_planes + 9 * out_planes * out_planes
        shortcut = in_planes * out_planes if in_planes != out_planes else 0
        return bn + convs + shortcut

    def stage(in_planes: int, out_planes: int) -> int:
        return block(in_planes, out_planes) + (blocks_per_stage - 1) * block(out_planes, out_planes)

    stem = 9 * 3 * w0
    head = 2 * w3 + w3 * num_classes + num_classes
    stage1 = stage(w0, w1) * (2 if with_sub_block1 else 1)
    return stem + stage1 + stage(w1, w2) + stage(w2, w3) + head


def test_wrn34_10_state_dict_keys_are_those_of_the_trades_checkpoint(wrn34_10: nn.Module) -> None:
    expected = trades_wrn_keys(34, 10)
    # 4 NetworkBlocks x 5 BasicBlocks x 12 keys, 4 convShortcuts, conv1, bn1 (5), fc (2).
    assert len(expected) == len(set(expected)) == 4 * 5 * 12 + 4 + 1 + 5 + 2
    assert set(wrn34_10.state_dict()) == set(expected)


def test_wrn34_10_tensor_shapes(wrn34_10: nn.Module) -> None:
    state = wrn34_10.state_dict()
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert state["block3.layer.0.conv1.weight"].shape == (640, 320, 3, 3)
    assert state["block3.layer.4.conv2.weight"].shape == (640, 640, 3, 3)
    assert state["bn1.running_var"].shape == (640,)
    assert state["fc.weight"].shape == (10, 640)


def test_wrn34_10_parameter_count_follows_from_its_definition(wrn34_10: nn.Module) -> None:
    # By hand: stem 432; block1 (16->160) 2,102,112; block2 (160->320) 8,812,480;
    # block3 (320->640) 35,237,760; bn1 1,280; fc 6,410 -> 46,160,474, plus the unused
    # sub_block1 (2,102,112) -> 48,262,586.
    assert trades_wrn_parameter_count(34, 10, 10, with_sub_block1=False) == 46_160_474
    assert trades_wrn_parameter_count(34, 10, 10) == 48_262_586
    assert parameter_count(wrn34_10) == 48_262_586


def test_trades_block_projects_the_preactivated_input_when_width_changes() -> None:
    block = WideBasicBlock(4, 8, stride=1).eval()
    identity_block = WideBasicBlock(8, 8, stride=1).eval()
    with torch.no_grad():
        for conv in (block.conv2, identity_block.conv2):
            conv.weight.zero_()  # the residual branch adds nothing: only the shortcut is left
        for bn in (block.bn1, identity_block.bn1):
            bn.running_mean.fill_(0.5)
        x = images((2, 4, 6, 6))
        preactivated = F.relu(block.bn1(x))
        torch.testing.assert_close(block(x), block.convShortcut(preactivated))
        x8 = images((2, 8, 6, 6))
        torch.testing.assert_close(identity_block(x8), x8)


def test_wrn34_10_sub_block1_is_not_used_in_forward(wrn34_10: nn.Module) -> None:
    x = images((1, 3, 32, 32))
    with torch.no_grad():
        before = wrn34_10.eval()(x)
        saved = {k: v.clone() for k, v in wrn34_10.sub_block1.state_dict().items()}
        for parameter in wrn34_10.sub_block1.parameters():
            parameter.add_(1.0)
        after = wrn34_10(x)
        wrn34_10.sub_block1.load_state_dict(saved)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_resnet18_has_11_173_962_parameters_for_10_classes() -> None:
    assert parameter_count(build_model("resnet18", num_classes=10)) == 11_173_962
