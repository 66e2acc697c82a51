"""runtime.compile: what the compiled student computes in the attack and in the loss, how many graph
variants it compiles, and that running out of them is an error; the optimiser's kernel by device.

The graphs come from a recording ``aot_autograd`` backend (eager execution of the AOT graphs: no C++
compiler, seconds). The inductor run that checks the trained weights is in tests/test_train.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch._dynamo
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from absld.data import Batch
from absld.methods import METHODS, MethodContext, build_method
from absld.models import build_model
from absld.params import AttackConfig, TrainConfig
from absld.runtime import Runtime
from absld.train import compiled
from absld.train.compiled import CompileError, batch_sizes, compile_student, frozen
from absld.train.loop import fit, method_loss, sgd_implementation
from tests.test_train import tiny_setup

COMPILED = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False, compile=True)


def tiny(method: str = "trades", n: int = 48, seed: int = 0):
    """tests/test_train.py's tiny run with ``n`` images (n = 40 leaves a partial last batch)."""
    return tiny_setup(method, seed, n)


class Recorder:
    """An ``aot_eager``-like backend that keeps, for every graph AOTAutograd compiles, the phase of
    the training step it was compiled in (``attack`` inside ``method.perturb``, else ``loss``) and
    the shapes of its outputs (None where the backward graph returns no gradient); each forward graph's
    batch size ("dynamic" for a symbolic one)."""

    def __init__(self) -> None:
        self.phase = "loss"
        self.calls = 0  # compiled forward graphs run
        self.forward: list[tuple[str, int | str]] = []  # phase, batch size
        self.backward: list[tuple[str, list[tuple[int, ...] | None]]] = []
        self.backend = aot_autograd(fw_compiler=self._fw, bw_compiler=self._bw)

    def _fw(self, gm, example_inputs):
        (x,) = [t for t in example_inputs if isinstance(t, torch.Tensor) and tuple(t.shape[1:]) == (3, 16, 16)]
        self.forward.append((self.phase, x.shape[0] if isinstance(x.shape[0], int) else "dynamic"))
        graph = make_boxed_func(gm)

        def run(args):
            self.calls += 1
            return graph(args)

        run._boxed_call = True
        return run

    def _bw(self, gm, example_inputs):
        (output,) = [node for node in gm.graph.nodes if node.op == "output"]
        shapes = [None if o is None else tuple(o.meta["val"].shape) for o in output.args[0]]
        self.backward.append((self.phase, shapes))
        return make_boxed_func(gm)

    def watch(self, method) -> None:
        """Mark the graphs compiled while ``method`` attacks."""
        perturb = method.perturb

        def tagged(*args, **kwargs):
            self.phase = "attack"
            try:
                return perturb(*args, **kwargs)
            finally:
                self.phase = "loss"

        method.perturb = tagged


@pytest.fixture()
def recorder(monkeypatch) -> Recorder:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rec = Recorder()
    monkeypatch.setattr(compiled, "BACKEND", rec.backend)
    yield rec
    torch._dynamo.reset()


def test_the_compiled_attack_computes_the_input_gradient_alone_and_the_loss_the_weight_gradients(recorder):
    model, meth, loader = tiny("trades")
    recorder.watch(meth)
    fit(model, meth, loader, TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), COMPILED)
    weights = [tuple(p.shape) for p in model.parameters()]
    attack = [shapes for phase, shapes in recorder.backward if phase == "attack"]
    loss = [shapes for phase, shapes in recorder.backward if phase == "loss"]
    assert len(attack) == 1 and len(loss) == 1  # one graph each (the no_grad attack pass has no backward)
    assert [s for s in attack[0] if s is not None] == [(16, 3, 16, 16)]  # d/dx' only
    assert sorted(s for s in loss[0] if s is not None) == sorted(weights)  # every weight, not the input
    assert all(p.requires_grad for p in model.parameters())  # given back after the attack


def test_two_epochs_compile_the_expected_static_variants_once_and_never_fall_back_to_eager(recorder):
    """40 images in batches of 16: sizes 16 and 8, each its own static graph, three variants each (attack with an input
    gradient, attack under no_grad, loss), all compiled in epoch 1 and reused in epoch 2."""
    model, meth, loader = tiny("trades", n=40)
    recorder.watch(meth)
    graphs_after: list[tuple[int, int]] = []
    fit(model, meth, loader, TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[]), COMPILED,
        on_epoch=lambda row: graphs_after.append((len(recorder.forward), recorder.calls)))
    # each batch: the clean targets (no_grad), 2 PGD steps, the loss's clean and attacked passes = 5
    # student forwards, all through compiled graphs (3 batches an epoch): none ran eagerly
    assert graphs_after == [(6, 15), (6, 30)]
    assert sorted(recorder.forward) == [("attack", 8)] * 2 + [("attack", 16)] * 2 + [("loss", 8), ("loss", 16)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 6
    assert not torch._dynamo.utils.counters["graph_break"]


def test_running_out_of_the_variant_budget_is_an_error_not_eager_execution(recorder, monkeypatch):
    monkeypatch.setattr(compiled, "VARIANTS_PER_SIZE", 2)  # TRADES needs 3
    monkeypatch.setattr(compiled, "MARGIN", 0)
    model, meth, loader = tiny("trades")
    with pytest.raises(CompileError, match=r"runtime.compile: .* more than 2 compiled variants"):
        fit(model, meth, loader, TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), COMPILED)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_gives_back_requires_grad_after_an_error_and_leaves_frozen_parameters_frozen():
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    with pytest.raises(ZeroDivisionError):
        with frozen(model):
            assert not any(p.requires_grad for p in model.parameters())
            1 / 0
    assert model.weight.requires_grad and not model.bias.requires_grad


@pytest.mark.parametrize(("n", "drop_last", "world", "sizes"), [
    (48, False, 1, {16}), (40, False, 1, {16, 8}), (40, True, 1, {16}), (8, False, 1, {8}),
    (40, False, 2, {8, 4}), (41, False, 2, {8, 5, 4}),
])
def test_batch_sizes_are_those_each_process_sees(n, drop_last, world, sizes):
    assert batch_sizes(n, 16, drop_last, world) == sizes


def test_sgd_is_fused_on_cuda_and_torchs_default_on_the_cpu():
    assert sgd_implementation(torch.device("cuda", 0)) == {"fused": True}
    assert sgd_implementation(torch.device("cpu")) == {}


@pytest.mark.parametrize(("device", "fused"), [("cpu", None), ("cuda", True)])
def test_fit_builds_its_sgd_with_the_devices_kernel(monkeypatch, device, fused):
    seen = {}

    class Built(Exception):
        pass

    def sgd(params, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(torch.optim, "SGD", sgd)
    model, meth, loader = tiny("sat")
    with pytest.raises(Built):
        fit(model, meth, loader, TrainConfig(epochs=1), replace(COMPILED, device=torch.device(device), compile=False))
    assert seen.get("fused") is fused and seen.get("foreach") is None


def test_a_resumed_optimiser_takes_this_devices_kernel_not_the_saved_one(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[])
    rt = replace(COMPILED, compile=False)
    model, meth, loader = tiny("sat")
    fit(model, meth, loader, cfg, rt, checkpoint=tmp_path / "c.pt", stop_after=1)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["optimizer"]["param_groups"][0]["fused"] = True  # as saved by a CUDA run
    torch.save(state, tmp_path / "c.pt")
    built = []
    real = torch.optim.SGD

    class Recording(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Recording)
    model, meth, loader = tiny("sat")
    result = fit(model, meth, loader, cfg, rt, checkpoint=tmp_path / "c.pt")
    assert result.resumed_from == 1
    assert built[0].param_groups[0]["fused"] is None and built[0].param_groups[0]["foreach"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_methods_compiled_step_fits_the_variant_budget_and_attacks_without_weight_gradients(recorder, name):
    """Each method's attack and loss through the compiled views (:func:`compile_student`): at most
    ``VARIANTS_PER_SIZE`` graphs for one batch size, none added by a second step, and every backward
    compiled in the attack returns the input gradient alone."""
    from tests.test_methods import DEFAULT_CONFIGS

    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=4, in_channels=3)
    teacher = build_model("tiny_cnn", num_classes=4, in_channels=3).eval().requires_grad_(False)
    clean_teacher = build_model("tiny_cnn", num_classes=4, in_channels=3).eval().requires_grad_(False)
    spec = METHODS[name]
    method = build_method(name, DEFAULT_CONFIGS[name](), MethodContext(
        num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=2), student=student,
        teacher=teacher if spec.uses_teacher else None, clean_teacher=clean_teacher if spec.uses_clean_teacher else None))
    recorder.watch(method)
    attack, loss = compile_student(student, None, {16})
    rt = replace(COMPILED, compile=True)
    graphs = []
    for step in range(2):
        x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 4
        out = method_loss(attack, method, method.logits_teacher, Batch(x, y, torch.arange(16)), rt, loss_model=loss)
        out.loss.backward()
        student.zero_grad(set_to_none=True)
        graphs.append(len(recorder.forward))
    assert graphs[0] == graphs[1] <= compiled.VARIANTS_PER_SIZE
    attack_backward = [shapes for phase, shapes in recorder.backward if phase == "attack"]
    assert attack_backward and all([s for s in shapes if s is not None] == [(16, 3, 16, 16)] for shapes in attack_backward)


def attack_flops(arch: str, batch: int, frozen_weights: bool) -> tuple[float, float]:
    """FLOPs per image of one PGD step on ``arch`` (eval mode, 32x32 inputs) compiled as the training
    loop's attack compiles it (``frozen_weights``) or with the weights requiring grad (as before):
    ``torch.utils.flop_counter`` over the AOT forward and backward graphs as they run."""
    from torch.utils.flop_counter import FlopCounterMode

    from absld.attacks.losses import ce_loss
    from absld.attacks.pgd import pgd

    flops = {"forward": 0, "backward": 0}

    def counting(kind):
        def compiler(gm, example_inputs):
            gm.real_recompile() if hasattr(gm, "real_recompile") else None

            def run(args):
                with FlopCounterMode(display=False) as counter:
                    out = gm.forward(*args)  # not gm(...): the counter's module hooks trip on a graph module
                flops[kind] += counter.get_total_flops()
                return out

            run._boxed_call = True
            return run
        return compiler

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3).eval()
    student = torch.compile(model, backend=aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward")),
                            dynamic=False, fullgraph=True)
    attack = compiled.FrozenParameters(student) if frozen_weights else student
    x, y = torch.rand(batch, 3, 32, 32), torch.arange(batch) % 10
    pgd(attack, x, ce_loss(y), eps=8 / 255, step=2 / 255, steps=1, start="uniform")
    torch._dynamo.reset()
    return flops["forward"] / batch, flops["backward"] / batch


@pytest.mark.parametrize("arch", ["tiny_cnn", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_the_compiled_attacks_backward_costs_one_forward_where_weight_gradients_cost_two(arch):
    """``pytest -s -k costs_one_forward`` prints the GFLOP per image and attack step (docs/speed.md)."""
    forward, backward = attack_flops(arch, 2, frozen_weights=True)
    forward_before, backward_before = attack_flops(arch, 2, frozen_weights=False)
    print(f"\n{arch}: forward {forward / 1e9:.3f} GFLOP/image/step; backward {backward_before / 1e9:.3f} "
          f"with the weights' gradients, {backward / 1e9:.3f} without")
    assert forward == forward_before > 0
    assert backward == pytest.approx(forward, rel=0.02)  # the input gradient: about one forward
    assert backward_before == pytest.approx(2 * forward, rel=0.02)  # + the weight gradients: one more


def test_the_budget_is_an_error_without_fullgraph_too(recorder):
    """The loss of data-parallel training is compiled without fullgraph (DDP's graph): there the
    recompile limit alone must stop a fall-back to eager."""
    budgeted = compiled.Budgeted(torch.compile(torch.nn.Linear(3, 2), backend="aot_eager", dynamic=False),
                                 limit=1, what="one")
    budgeted(torch.rand(4, 3))
    with pytest.raises(CompileError, match="more than 1 compiled variants"):
        budgeted(torch.rand(5, 3))
