"""runtime.cpu_bf16: true, false, or auto (on where the CPU has native bf16 units)."""

from __future__ import annotations

import pytest
import torch

import absld.runtime
from absld.params import ConfigError, RuntimeConfig, parse_params
from absld.runtime import cpu_has_native_bf16, setup


@pytest.mark.parametrize(("capabilities", "native"), [
    ({"avx512_bf16": True, "amx_bf16": False}, True),
    ({"avx512_bf16": False, "amx_bf16": True}, True),
    ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, False),
    ({"architecture": "arm64"}, False),
])
def test_native_bf16_is_avx512_bf16_or_amx_bf16(monkeypatch, capabilities, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_means_bf16_and_channels_last_on_a_cpu_with_native_bf16_and_float32_elsewhere(monkeypatch, native):
    monkeypatch.setattr(absld.runtime, "cpu_has_native_bf16", lambda: native)
    rt = setup(RuntimeConfig(device="cpu", cpu_bf16="auto"))
    assert (rt.amp, rt.channels_last) == (native, native)
    assert rt.resolved()["bf16_autocast"] is native
    with rt.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("native", [True, False])
def test_true_and_false_keep_their_meaning_whatever_the_cpu(monkeypatch, native):
    monkeypatch.setattr(absld.runtime, "cpu_has_native_bf16", lambda: native)
    assert setup(RuntimeConfig(device="cpu", cpu_bf16=True)).amp is True
    assert setup(RuntimeConfig(device="cpu", cpu_bf16=False)).amp is False


def test_auto_reads_the_cpu_only_when_asked(monkeypatch):
    def probe():
        raise AssertionError("the CPU was probed")

    monkeypatch.setattr(absld.runtime, "cpu_has_native_bf16", probe)
    assert setup(RuntimeConfig(device="cpu", cpu_bf16=False)).amp is False


@pytest.mark.parametrize("value", ["auto", "AUTO", True, False, "true", "false"])
def test_cpu_bf16_accepts_true_false_and_auto(value):
    expected = value.lower() if value in ("auto", "AUTO") else value in (True, "true")
    assert RuntimeConfig(cpu_bf16=value).cpu_bf16 == expected


@pytest.mark.parametrize("value", ["sometimes", 1, 0.5, None])
def test_a_bad_cpu_bf16_is_one_line_naming_the_value_and_what_is_allowed(value):
    with pytest.raises(ConfigError) as info:
        parse_params({"runtime": {"cpu_bf16": value}})
    message = str(info.value)
    assert "runtime.cpu_bf16" in message and repr(value) in message and "true, false or auto" in message
    assert "\n" not in message


def test_on_cuda_cpu_bf16_is_ignored_and_the_cpu_not_probed(monkeypatch):
    def probe():
        raise AssertionError("the CPU was probed")

    monkeypatch.setattr(absld.runtime, "cpu_has_native_bf16", probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:  # setup sets these on CUDA
        rt = setup(RuntimeConfig(device="cuda", cpu_bf16="auto", amp=False, channels_last=False))
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert rt.device.type == "cuda" and (rt.amp, rt.channels_last) == (False, False)
