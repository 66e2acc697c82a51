"""Test-wide settings: no network, no tracking, small fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["TQDM_DISABLE"] = "1"  # no progress bars in test logs (tqdm's own switch, read by the stages too)
os.environ.setdefault("WANDB_DIR", "/tmp/absld-tests-wandb")

REPO = Path(__file__).resolve().parents[1]


def committed_params_text() -> str:
    """params.yaml as committed (a profile run leaves its overrides in the workspace copy)."""
    import subprocess

    try:
        return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return (REPO / "params.yaml").read_text()


def profile_params_text(name: str) -> str:
    """The params.yaml that `dvc exp run -S profile=<name>` composes (conf/config.yaml + conf/profile/<name>.yaml)."""
    import tempfile

    from absld.params import compose_profile

    with tempfile.TemporaryDirectory() as tmp:
        compose_profile(name, Path(tmp) / "params.yaml", conf=REPO / "conf")
        return (Path(tmp) / "params.yaml").read_text()


@pytest.fixture()
def paper_params(tmp_path: Path) -> Path:
    """A copy of the committed params.yaml (the paper's configuration)."""
    path = tmp_path / "paper-params.yaml"
    path.write_text(committed_params_text())
    return path


# mutmut forks its test runs from a process that has run tests: an intra-op thread pool that
# existed before the fork deadlocks in the child, so under mutation testing torch stays on one thread.
THREADS = 1 if "MUTANT_UNDER_TEST" in os.environ or os.environ.get("ABSLD_TEST_THREADS") == "1" else 2


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The whole suite runs offline: a connection to anything but this machine (loopback or a Unix
    socket, which W&B's local service and DVC's queue use) fails the test that tried it."""
    import socket

    for name in ("connect", "connect_ex"):
        real = getattr(socket.socket, name)

        def guarded(self, address, _real=real):
            host = address[0] if isinstance(address, tuple) else None
            if self.family == getattr(socket, "AF_UNIX", None) or host in LOOPBACK:
                return _real(self, address)
            raise AssertionError(f"the test suite never touches the network; something connected to {address!r}")

        monkeypatch.setattr(socket.socket, name, guarded)
    yield


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture()
def cifar_fixture(tmp_path: Path) -> Path:
    """A CIFAR-10-format dataset root (20 train / 6 test images per class)."""
    from tests.fixtures import write_cifar10

    root = tmp_path / "fixture"
    write_cifar10(root)
    return root


def pytest_collection_modifyitems(config, items):
    """The `crosscheck` tests need torchattacks, an optional extra kept out of the main environment
    (its wheel pins an old requests). Without it they are skipped with the command that runs them;
    with ABSLD_CROSSCHECK=1 (set by ./reproduce.sh crosscheck) a missing torchattacks fails them."""
    import importlib.util

    if importlib.util.find_spec("torchattacks") is not None or os.environ.get("ABSLD_CROSSCHECK") == "1":
        return
    skip = pytest.mark.skip(reason="needs torchattacks (the crosscheck extra): run ./reproduce.sh crosscheck")
    for item in items:
        if "crosscheck" in item.keywords:
            item.add_marker(skip)
