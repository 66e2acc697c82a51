"""The bad-input matrix: each mistake stops with exit code 1 and one line that names the problem
and what is allowed, before anything is written or deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from absld.params import load_profile
from pipeline.cli import main
from tests.conftest import REPO, profile_params_text


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    return tmp_path


@pytest.fixture()
def with_teacher(project):
    """The project after `absld prepare` and `absld teacher`."""
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    assert CliRunner().invoke(main, ["teacher"]).exit_code == 0
    return project


def set_value(path, dotted, value):
    params = yaml.safe_load((path / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params))


def files(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


PARAMS_CASES = [  # (dotted key, bad value, words the one-line message must hold)
    ("data.dataset", "cifar11", ["data.dataset", "cifar11", "fashion-mnist"]),
    ("distill.student.arch", "resnet99", ["distill.student.arch", "resnet99", "resnet18"]),
    ("distill.methods", ["absld", "nope"], ["distill.methods", "nope", "rslad"]),
    ("evaluate.eps", 0, ["evaluate.eps"]),
    ("evaluate.eps", "300/255", ["evaluate.eps"]),
    ("teacher.attack.eps", 0.031, ["teacher.attack.eps", "8/255"]),
    ("distill.attack.step", "16/255", ["exceeds eps"]),
    ("seeds", [], ["seeds"]),
    ("analyze.confidence", 1.5, ["analyze.confidence", "1.5"]),
    ("distill.train.lr", -0.1, ["distill.train.lr", "-0.1", "greater than 0"]),
    ("distill.absld.betta", 0.3, ["unknown key 'distill.absld.betta'"]),
    ("wandb", {"tags": ["x"]}, ["'wandb' is not a params.yaml key", "WANDB_TAGS"]),
    ("runtime.nan_policy", "ignore", ["runtime.nan_policy", "ignore", "skip_batch"]),
    ("data.synthetic.train_per_class", 0, ["data.synthetic.train_per_class", "greater than 0"]),
    ("profile", "my profile", ["profile", "my profile"]),
    ("data.val_per_class", 0, ["frl_rw", "cfa", "data.val_per_class"]),  # the tiny profile runs FRL and CFA
    ("distill.frl_rwrm.lim", 1.5, ["distill.frl_rwrm.lim", "less than 1"]),
    ("distill.cfa.average", "fwa", ["distill.cfa.average", "fawa"]),
]


@pytest.mark.parametrize("key, value, words", PARAMS_CASES, ids=[f"{k}={v}" for k, v, _ in PARAMS_CASES])
def test_a_bad_param_stops_every_stage_with_one_line_and_writes_nothing(project, key, value, words):
    set_value(project, key, value)
    before = files(project)
    for stage in (["check"], ["prepare"], ["distill", "--method", "absld", "--seed", "0"]):
        result = CliRunner().invoke(main, stage)
        assert result.exit_code == 1, (stage, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
        assert all(word in result.output for word in words), result.output
        assert "Traceback" not in result.output
    assert files(project) == before


def test_params_that_are_not_yaml_name_the_file(project):
    (project / "params.yaml").write_text("data: [unclosed\n")
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1 and "params.yaml" in result.output and result.output.count("\n") == 1


def test_a_source_dir_that_does_not_exist_is_an_error_not_a_fallback(project):
    set_value(project, "data.dataset", "fashion-mnist")
    set_value(project, "data.source_dir", str(project / "nowhere"))
    result = CliRunner().invoke(main, ["prepare"])
    assert result.exit_code == 1 and "data.source_dir" in result.output and "is not a directory" in result.output
    assert not (project / "data").exists()


def test_more_test_images_than_the_test_set_is_an_error_naming_the_size(with_teacher):
    set_value(with_teacher, "evaluate.n_samples", 10_000)
    before = files(with_teacher)
    result = CliRunner().invoke(main, ["evaluate", "--model", "teacher"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "evaluate.n_samples" in result.output and "10000" in result.output
    assert files(with_teacher) == before


def test_an_autoattack_subset_without_every_class_is_refused_before_attacking(with_teacher):
    """evaluate.aa.n_samples: 2 -- the worst-class accuracy of AA on 2 images is undefined (was a
    traceback from the summary, after the whole evaluation had run)."""
    set_value(with_teacher, "evaluate.aa.n_samples", 2)
    before = files(with_teacher)
    result = CliRunner().invoke(main, ["evaluate", "--model", "teacher"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "the first 2 test images (evaluate.aa.n_samples) hold no image of class(es)" in result.output
    assert files(with_teacher) == before


def test_a_fair_method_whose_validation_images_miss_a_class_is_refused_before_training(with_teacher):
    """distill.frl_rw.validation.n_samples: 3 -- FRL's class-wise errors need every class (was a
    ValueError traceback after the first epoch)."""
    set_value(with_teacher, "distill.frl_rw.validation.n_samples", 3)
    before = files(with_teacher)
    result = CliRunner().invoke(main, ["distill", "--method", "frl_rw", "--seed", "0"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "distill.frl_rw.validation.n_samples = 3" in result.output and "raise it or set null" in result.output
    assert files(with_teacher) == before


def test_a_student_checkpoint_for_another_dataset_is_refused(project):
    import torch

    from absld.models import build_model, save_checkpoint

    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    torch.manual_seed(0)
    save_checkpoint(project / "models" / "students" / "absld" / "seed0.pt",
                    build_model("tiny_cnn", num_classes=7, in_channels=3))
    result = CliRunner().invoke(main, ["evaluate", "--model", "absld/seed0"])
    assert result.exit_code == 1 and "7 classes" in result.output and result.output.count("\n") == 1
    assert not (project / "results").exists()


def test_a_second_run_of_a_running_stage_stops_at_once_naming_the_first(project):
    import os

    from pipeline.common import stage_lock

    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    before = files(project)
    with stage_lock("distill-absld-seed0"):  # as if another process were training this student
        result = CliRunner().invoke(main, ["distill", "--method", "absld", "--seed", "0"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert f"distill-absld-seed0 is already running (pid {os.getpid()}" in result.output
        other = CliRunner().invoke(main, ["distill", "--method", "rslad", "--seed", "0", "--stop-after", "1"])
        assert "already running" not in other.output  # another student is another lock
    assert not (project / "models" / "students" / "absld").exists()
    assert all(entry in files(project) for entry in before)


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert all(word in result.output for word in words), result.output


def teacher_file(project, arch="tiny_cnn", num_classes=10):
    """An external teacher checkpoint (a bare state_dict, as published teachers are) and its sha256."""
    import torch

    from absld.io import sha256_file
    from absld.models import build_model

    torch.manual_seed(0)
    path = project / "external.pt"
    torch.save(build_model(arch, num_classes=num_classes, in_channels=3).state_dict(), path)
    return path, sha256_file(path)


def use_teacher_file(project, path, digest):
    set_value(project, "teacher.source", "file")
    set_value(project, "teacher.path", str(path))
    set_value(project, "teacher.sha256", digest)
    set_value(project, "teacher.published_clean_acc", None)


TEACHER_FILE_CASES = [  # (how the file is wrong, words of the message)
    ("missing", ["teacher.path", "does not exist"]),
    ("wrong sha256", ["does not match teacher.sha256"]),
    ("7 classes", ["7", "10"]),
    ("another architecture", ["teacher.model.arch"]),
]


@pytest.mark.parametrize("fault, words", TEACHER_FILE_CASES, ids=[c for c, _ in TEACHER_FILE_CASES])
def test_an_imported_teacher_that_does_not_fit_stops_before_writing(project, fault, words):
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    arch, classes = ("small_cnn", 10) if fault == "another architecture" else ("tiny_cnn", 10)
    path, digest = teacher_file(project, arch, 7 if fault == "7 classes" else classes)
    if fault == "missing":
        path = project / "no-such-teacher.pt"
    if fault == "wrong sha256":
        digest = "0" * 64
    use_teacher_file(project, path, digest)
    before = files(project)
    one_line_error(CliRunner().invoke(main, ["teacher"]), *words)
    assert files(project) == before


def test_a_truncated_prepared_dataset_file_is_named_with_the_fix(project):
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    images = project / "data" / "synthetic" / "train_images.npy"
    images.write_bytes(images.read_bytes()[:1000])  # a copy cut short
    before = files(project)
    one_line_error(CliRunner().invoke(main, ["teacher"]), str(Path("data/synthetic/train_images.npy")),
                   "absld prepare")
    assert files(project) == before


def write_fashion_idx(folder, n=20):
    """Fashion-MNIST's four gzipped IDX files (random pixels)."""
    import gzip

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return folder


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_a_truncated_dataset_file_is_named_before_anything_is_written(project, dataset):
    from tests.fixtures import write_cifar10

    if dataset == "cifar10":
        folder = write_cifar10(project / "raw")
        broken = folder / "data_batch_2"
        set_value(project, "data.verify_md5", False)  # the fixture is not the official archive
    else:
        folder = write_fashion_idx(project / "raw" / "fashion")
        broken = folder / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a download cut short
    set_value(project, "data.dataset", dataset)
    set_value(project, "data.source_dir", str(folder if dataset == "fashion-mnist" else folder.parent))
    before = files(project)
    one_line_error(CliRunner().invoke(main, ["prepare"]), str(broken), "truncated or corrupt")
    assert files(project) == before and not (project / "data").exists()


def test_an_output_folder_that_is_a_file_stops_the_stage_before_any_work(project):
    """`models` is a file (a failed copy, a name clash): even root cannot write under it."""
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    (project / "models").write_text("not a folder")
    before = files(project)
    one_line_error(CliRunner().invoke(main, ["teacher"]), "cannot write models", "is a file, not a directory")
    assert files(project) == before


def test_an_unwritable_output_folder_stops_the_stage_before_any_work(project, monkeypatch):
    """A read-only or foreign folder: the stage's write check is refused (EACCES, as for a non-root
    user; tests may run as root, whom chmod does not stop, so the refusal is injected)."""
    import errno
    import tempfile

    import absld.io

    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    real = tempfile.TemporaryFile

    def refuse_results(*args, dir=None, **kwargs):
        if Path(dir).name == "results":
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    (project / "results").mkdir(exist_ok=True)
    monkeypatch.setattr(absld.io.tempfile, "TemporaryFile", refuse_results)
    before = files(project)
    one_line_error(CliRunner().invoke(main, ["teacher"]), "cannot write results: Permission denied",
                   "make the directory writable")
    assert files(project) == before


def test_a_full_disk_keeps_the_previous_output_and_leaves_no_temporary(with_teacher, monkeypatch):
    """The disk fills while the teacher is written: one line naming the file and the fix; the
    previous teacher.pt is intact, no temporary is left, and the next run (space freed) resumes."""
    import errno

    import absld.io

    project = with_teacher
    teacher = (project / "models" / "teacher.pt").read_bytes()
    real = absld.io._write_synced

    def full_for_the_teacher(handle, data):
        if Path(handle.name).name.startswith(".teacher.pt."):
            handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, data)

    monkeypatch.setattr(absld.io, "_write_synced", full_for_the_teacher)
    result = CliRunner().invoke(main, ["teacher"])  # also prints that it resumes after the last epoch
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"cannot write {Path('models/teacher.pt')}: No space left on device" in errors[0]
    assert "the disk is full" in errors[0]
    assert (project / "models" / "teacher.pt").read_bytes() == teacher
    assert [p for p in project.rglob("*.tmp")] == []
    monkeypatch.setattr(absld.io, "_write_synced", real)
    assert CliRunner().invoke(main, ["teacher"]).exit_code == 0
    assert (project / "models" / "teacher.pt").read_bytes() == teacher


def test_a_profile_that_does_not_exist_stops_reproduce_sh_before_any_install(tmp_path):
    import shutil
    import subprocess

    from tests.conftest import REPO

    shutil.copy(REPO / "reproduce.sh", tmp_path / "reproduce.sh")
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run(["bash", "reproduce.sh", "run", "quik"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "no profile conf/profile/quik.yaml" in result.stderr + result.stdout
    assert "quick" in result.stderr + result.stdout  # the profiles there are
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no .venv, nothing


@pytest.mark.parametrize("value", ["soon", "-5", "nan"])
def test_a_bad_evaluation_save_interval_is_one_line_before_attacking(with_teacher, monkeypatch, value):
    monkeypatch.setenv("ABSLD_EVAL_SAVE_SECONDS", value)
    before = files(with_teacher)
    one_line_error(CliRunner().invoke(main, ["evaluate", "--model", "teacher"]),
                   f"ABSLD_EVAL_SAVE_SECONDS={value!r} is not a number of seconds >= 0")
    assert files(with_teacher) == before


@pytest.fixture()
def gray_project(project):
    """The tiny project on 1-channel 28x28 images (Fashion-MNIST's files, random pixels), prepared."""
    set_value(project, "data.dataset", "fashion-mnist")
    set_value(project, "data.source_dir", str(write_fashion_idx(project / "raw" / "fashion", n=60)))
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    return project


def test_a_colour_student_on_grey_data_is_one_line_naming_both_channel_counts(gray_project):
    """A 3-channel checkpoint on 1-channel data was a 76-line traceback from the first convolution."""
    import torch

    from absld.models import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(gray_project / "models" / "students" / "absld" / "seed0.pt",
                    build_model("tiny_cnn", num_classes=10, in_channels=3))
    before = files(gray_project)
    one_line_error(CliRunner().invoke(main, ["evaluate", "--model", "absld/seed0"]),
                   "takes 3-channel images", "fashion-mnist's are 1-channel (1x28x28)", "data.dataset")
    assert files(gray_project) == before and not (gray_project / "results").exists()


def test_a_colour_teacher_for_a_grey_student_is_refused_before_training(gray_project):
    import torch

    from absld.models import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(gray_project / "models" / "teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    before = files(gray_project)
    one_line_error(CliRunner().invoke(main, ["distill", "--method", "absld", "--seed", "0"]),
                   "the teacher", "takes 3-channel images", "1-channel", "absld teacher")
    assert files(gray_project) == before


TINY_METHODS = load_profile("tiny", conf=REPO / "conf").distill.methods  # the project fixture's profile
MISSING_STUDENT_CASES = [  # (model id, words of the one-line hint, words it must not hold)
    ("absld/seed0", ["absld distill --method absld --seed 0", "dvc repro distill@absld-0"], ["scratch"]),
    ("absld/seed7", ["seed 7 is not in seeds [0]", "absld distill --method absld --seed 7",
                     "dvc exp run -S profile=tiny -S 'seeds=[0,7]'", str(Path("scratch/models/students/absld/seed7.pt"))],
     ["distill@"]),
    ("trades/seed0", [f"method trades is not in distill.methods [{', '.join(TINY_METHODS)}]",
                      f"-S 'distill.methods=[{','.join(TINY_METHODS)},trades]'",
                      "absld distill --method trades --seed 0"], ["distill@", "seeds="]),
]


@pytest.mark.parametrize("model, words, absent", MISSING_STUDENT_CASES, ids=[m for m, _, _ in MISSING_STUDENT_CASES])
def test_a_missing_student_suggests_a_stage_only_where_the_matrix_has_one(project, model, words, absent):
    """`absld evaluate --model absld/seed7` with seeds [0] suggested `dvc repro distill@absld-7`,
    a stage that does not exist."""
    before = files(project)
    result = CliRunner().invoke(main, ["evaluate", "--model", model])
    one_line_error(result, *words)
    assert not any(word in result.output for word in absent), result.output
    assert files(project) == before
