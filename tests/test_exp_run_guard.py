"""`dvc exp run -S` with a bad value stops before DVC writes params.yaml or touches an output.

DVC composes params.yaml (Hydra) and then checks out the outputs the new dvc.yaml names before the
`check` stage can run; a bad matrix value used to remove student checkpoints there (or fail inside
DVC with "'Value' object is not iterable"). hydra_plugins/absld_params validates the composition
first. Each case here would, without it, leave params.yaml rewritten (DVC writes it before running
anything) and print DVC's own error or the check stage's, not this one line.
"""

from __future__ import annotations

import pytest

from absld.params import ConfigError, compose_profile
from tests.conftest import REPO
from tests.test_dvc_pipeline import dvc_project, run

BAD = [("seeds=[-1]", "seeds.0 = -1"), ("seeds=0", "seeds = 0"),
       ("distill.methods=[absld,absld]", "distill.methods = ['absld', 'absld']"),
       ("distill.absld.beta=-1", "distill.absld.beta = -1")]


@pytest.mark.parametrize(("override", "named"), BAD)
def test_a_bad_value_is_refused_while_composing(tmp_path, override, named):
    with pytest.raises(ConfigError) as err:
        compose_profile("tiny", tmp_path / "params.yaml", overrides=(override,), conf=REPO / "conf")
    assert named in str(err.value) and "profile tiny" in str(err.value)
    assert not (tmp_path / "params.yaml").exists()


def test_a_good_value_composes_as_before(tmp_path):
    compose_profile("tiny", tmp_path / "params.yaml", overrides=("seeds=[0,3]",), conf=REPO / "conf")
    text = (tmp_path / "params.yaml").read_text()
    assert text.startswith("profile: tiny\nseeds:\n- 0\n- 3\n") and "absld_checked" not in text


def test_dvc_exp_run_with_a_bad_value_writes_and_deletes_nothing(tmp_path):
    project = dvc_project(tmp_path / "project")
    student = project / "models" / "students" / "absld" / "seed0.pt"
    student.parent.mkdir(parents=True)
    student.write_bytes(b"a trained student")
    params = (project / "params.yaml").read_bytes()
    for override, named in BAD[:3]:
        failed = run(["dvc", "exp", "run", "-S", "profile=tiny", "-S", override], project, ok=False)
        output = (failed.stdout + failed.stderr).strip()
        assert failed.returncode != 0, output
        assert output.count("\n") == 0 and named in output, output  # one line, naming the value
        assert "Nothing was written" in output and "Traceback" not in output
        assert (project / "params.yaml").read_bytes() == params
        assert student.read_bytes() == b"a trained student"
    assert not run(["git", "status", "--porcelain", "--untracked-files=no"], project).stdout.strip()
    assert not run(["git", "for-each-ref", "refs/exps"], project).stdout.strip()  # no experiment was made


def test_a_tweak_without_a_profile_stops_instead_of_composing_the_papers(tmp_path):
    project = dvc_project(tmp_path / "project")
    params = (project / "params.yaml").read_bytes()
    failed = run(["dvc", "exp", "run", "-S", "distill.absld.beta=0.3"], project, ok=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "You must specify 'profile'" in output and "tiny" in output, output
    assert (project / "params.yaml").read_bytes() == params
