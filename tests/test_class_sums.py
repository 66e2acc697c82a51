"""The class-wise sums of the methods' epoch state (ABSLD's class risks, CFA's hits, DAFA's and TRIX's
class similarities, Fair-ARD's kappa, WAT's costs): exact, in float32 under autocast, sync-free."""

from __future__ import annotations

import pytest
import torch

from absld.methods.risk import ClassRisk, class_sums


def test_class_sums_add_each_samples_value_to_its_own_class():
    y = torch.tensor([2, 0, 2, 1, 2])
    values = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0])
    assert class_sums(values, y, 4).tolist() == [10.0, 1000.0, 10101.0, 0.0]


def test_class_sums_of_rows_add_whole_rows():
    y = torch.tensor([1, 1, 0])
    rows = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    assert class_sums(rows, y, 3).tolist() == [[100.0, 200.0], [11.0, 22.0], [0.0, 0.0]]


def test_class_sums_keep_float32_and_float64_under_an_enclosing_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (128,), generator=generator)
    values = torch.rand(128, generator=generator) * 3 + 1e-3  # values bf16 would round
    plain = class_sums(values, y, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = class_sums(values, y, 10)
        wide = class_sums(values.double(), y, 10)
    assert inside.dtype == torch.float32 and wide.dtype == torch.float64
    assert torch.equal(inside, plain)
    exact = torch.zeros(10, dtype=torch.float64).index_add_(0, y, values.double())
    assert torch.allclose(plain.double(), exact, rtol=1e-6, atol=0)


def test_a_class_risk_sums_over_batches():
    risk = ClassRisk(3)
    risk.add(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    risk.add(torch.tensor([4.0]), torch.tensor([2]))
    assert risk.value().tolist() == [1.0, 0.0, 6.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: atomics make index_add_ order-dependent there")
def test_class_sums_are_bitwise_repeatable_on_cuda():
    y = torch.randint(0, 10, (4096,), device="cuda")
    values = torch.rand(4096, device="cuda")
    first = class_sums(values, y, 10)
    assert all(torch.equal(first, class_sums(values, y, 10)) for _ in range(20))
