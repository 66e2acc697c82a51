"""Ctrl-C (SIGINT): every `absld` command stops with one `interrupted: ...` line that says where it
stopped and how to go on, and exit status 130 (it was 1, with click's bare "Aborted!")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import REPO, profile_params_text

RESUME = "rerun the same command (or `dvc repro`) to resume from checkpoints/"


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """The tiny profile, prepared."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    return tmp_path


def as_the_console_script(args, capsys):
    """Run `absld ARGS` as the console script does (click's standalone mode): (status, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        main.main(args, prog_name="absld", standalone_mode=True)
    return stopped.value.code, capsys.readouterr().err


def test_a_real_sigint_during_training_exits_130_with_one_line(project):
    """The signal itself, in a child process running the CLI: the first epoch sends SIGINT to it."""
    child = (
        "import os, signal, time\n"
        "import absld.train.loop as loop\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as an interactive shell leaves it
        "def interrupted_epoch(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "loop._train_epoch = interrupted_epoch\n"
        "from pipeline.cli import main\n"
        "main(['distill', '--method', 'sat', '--seed', '0'], prog_name='absld')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", child], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"interrupted: distill sat/seed0 stopped in training epoch 1 of 3 (no epoch is saved yet); {RESUME}"]
    assert "Traceback" not in done.stdout + done.stderr and "Aborted" not in done.stderr


def test_an_interrupted_student_says_which_epochs_are_saved_and_resumes_after_them(project, monkeypatch, capsys):
    import absld.train.loop as loop

    real = loop._train_epoch

    def second_epoch_interrupted(*args, **kwargs):
        if args[7] == 2:  # the epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", second_epoch_interrupted)
    status, err = as_the_console_script(["distill", "--method", "sat", "--seed", "0"], capsys)
    assert status == 130
    assert err.splitlines() == [f"interrupted: distill sat/seed0 stopped in training epoch 2 of 3 "
                                f"(epoch 1 is saved); {RESUME}"]
    monkeypatch.setattr(loop, "_train_epoch", real)
    again = CliRunner().invoke(main, ["distill", "--method", "sat", "--seed", "0"])
    assert again.exit_code == 0 and "resuming after epoch 1" in again.output, again.output


def test_an_interrupted_evaluation_keeps_its_finished_batches_and_says_where_it_stopped(project, monkeypatch, capsys):
    import torch

    import absld.evaluate.cascade as cascade
    from absld.models import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(project / "models" / "teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    calls = []

    def second_batch_interrupted(model, x, y, noise):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return x

    monkeypatch.setattr(cascade, "_clean", second_batch_interrupted)
    status, err = as_the_console_script(["evaluate", "--model", "teacher"], capsys)
    assert status == 130
    assert err.splitlines() == [f"interrupted: evaluate teacher stopped in clean, batch 2 of 2 "
                                f"(its finished batches are saved); {RESUME}"]
    assert (project / "checkpoints" / "eval" / "teacher" / "progress.npz").is_file()  # saved at once, not in 30 s
    assert not (project / "results").exists()


@pytest.mark.parametrize("command, target", [
    (["prepare"], "pipeline.prepare.data.prepare"),
    (["check"], "pipeline.check.load"),
])
def test_every_command_turns_ctrl_c_into_one_line_and_status_130(project, monkeypatch, capsys, command, target):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    status, err = as_the_console_script(command, capsys)
    assert status == 130
    assert err.splitlines() == [f"interrupted: {command[0]} stopped; rerun the same command (or `dvc repro`) "
                                "to run it again"]
