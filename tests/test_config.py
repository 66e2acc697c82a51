"""params.yaml validation: every mistake is a one-line error naming the key and the value."""

from __future__ import annotations

import shutil

import yaml

import pytest

from absld.params import ConfigError, Params, compose_profile, load_params, load_profile, parse_params, profile_names
from tests.conftest import REPO, committed_params_text


def error_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_workspace_params_validate():
    assert isinstance(load_params(REPO / "params.yaml"), Params)


def test_committed_params_are_the_papers_recipe(paper_params):
    params = load_params(paper_params)
    assert params.data.dataset == "cifar10"
    assert params.teacher.model.arch == "wrn34_10"
    assert params.teacher.robustbench_id == "Zhang2019Theoretically"
    assert params.teacher.attack.eps == pytest.approx(8 / 255)
    assert params.teacher.attack.step == pytest.approx(2 / 255)


def test_unknown_dataset_names_the_value_and_the_choices():
    message = error_for({"data": {"dataset": "cifar11"}})
    assert "data.dataset" in message and "cifar11" in message and "fashion-mnist" in message


def test_bare_float_eps_is_rejected_with_a_fraction_hint():
    message = error_for({"teacher": {"attack": {"eps": 0.031}}})
    assert "teacher.attack.eps" in message and "8/255" in message


def test_fraction_eps_is_parsed():
    params = parse_params({"teacher": {"attack": {"eps": "16/255", "step": "4/255"}}})
    assert params.teacher.attack.eps == pytest.approx(16 / 255)


def test_negative_learning_rate_is_rejected():
    message = error_for({"teacher": {"train": {"lr": -0.1}}})
    assert "teacher.train.lr" in message and "-0.1" in message and "greater than 0" in message


def test_unknown_key_is_rejected_by_its_dotted_name():
    message = error_for({"teacher": {"train": {"epohcs": 3}}})
    assert "teacher.train.epohcs" in message and "unknown key" in message


@pytest.mark.parametrize("raw, variable", [
    ({"wandb": {"tags": ["x"]}}, "WANDB_TAGS"),
    ({"study": "absld-fashion"}, "WANDB_RUN_GROUP"),
    ({"runtime": {"progress": False}}, "TQDM_DISABLE"),
    ({"runtime": {"num_threads": 2}}, "OMP_NUM_THREADS"),
])
def test_settings_that_cannot_change_a_result_point_to_their_environment_variable(raw, variable):
    message = error_for(raw)
    assert "is not a params.yaml key" in message and variable in message


def test_profile_names_the_configuration():
    assert parse_params({}).profile == "paper"
    assert "profile" in error_for({"profile": "my profile"})


def test_step_larger_than_eps_is_rejected():
    assert "exceeds eps" in error_for({"teacher": {"attack": {"eps": "2/255", "step": "4/255"}}})


def test_file_teacher_needs_a_checksum():
    assert "teacher.sha256" in error_for({"teacher": {"source": "file", "path": "t.pt"}})


def test_every_profile_composes_to_valid_params():
    assert profile_names(REPO / "conf") == ["cifar100", "fashion", "paper", "paper-smoke", "quick", "tiny", "tinyimagenet"]
    for name in profile_names(REPO / "conf"):
        params = load_profile(name, conf=REPO / "conf")
        assert params.profile == name


def test_committed_params_yaml_is_the_paper_profile_as_dvc_composes_it(tmp_path):
    """`dvc exp run` rewrites params.yaml by composition: the committed file must be those bytes,
    or the first experiment would show a change nobody made (and rerun the `check` stage)."""
    compose_profile("paper", tmp_path / "params.yaml", conf=REPO / "conf")
    assert (tmp_path / "params.yaml").read_text() == committed_params_text()


def test_a_profile_overrides_the_paper_and_keeps_the_rest(tmp_path):
    quick = load_profile("quick", conf=REPO / "conf")
    paper = load_profile("paper", conf=REPO / "conf")
    assert quick.data.dataset == "fashion-mnist" and paper.data.dataset == "cifar10"
    assert quick.distill.absld.tau_max == paper.distill.absld.tau_max  # untouched by the profile
    compose_profile("quick", tmp_path / "p.yaml", overrides=("distill.absld.beta=0.2",), conf=REPO / "conf")
    assert load_params(tmp_path / "p.yaml").distill.absld.beta == 0.2


def test_unknown_profile_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="'quik' is not one of cifar100, fashion, paper, paper-smoke, quick, tiny, tinyimagenet"):
        compose_profile("quik", tmp_path / "p.yaml", conf=REPO / "conf")


def test_profile_with_a_typo_fails_validation(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "profile" / "bad.yaml").write_text("# @package _global_\nteacher:\n  trian: {}\n")
    with pytest.raises(ConfigError, match="teacher.trian"):
        load_profile("bad", conf=conf)


def test_selection_schedule_is_the_official_scripts():
    from absld.params import SelectEvalConfig, TrainConfig

    official = [e for e in range(1, 301) if (e % 10 == 0 and e < 215) or e >= 215]
    assert SelectEvalConfig(every=10).epochs(TrainConfig(epochs=300, milestones=[215, 260, 285])) == official
    assert SelectEvalConfig(every=1).epochs(TrainConfig(epochs=4, milestones=[])) == [1, 2, 3, 4]
    assert SelectEvalConfig(every=2).epochs(TrainConfig(epochs=5, milestones=[])) == [2, 4]
    # a method's own milestones move its schedule (ARD: 200 epochs, milestones [100, 150])
    params = parse_params({"distill": {"select": "test_fair_best", "ard": {"train": {"epochs": 200, "milestones": [100, 150]}}}})
    assert params.distill.selection_epochs("ard") == [e for e in range(1, 201) if e % 10 == 0 or e >= 100]
    assert parse_params({}).distill.selection_epochs("absld") == []  # select last: no selection PGD


def test_selection_that_evaluates_no_epoch_is_rejected():
    message = error_for({"distill": {"select": "val_fair_best", "train": {"epochs": 5, "milestones": []}}})
    assert "select_eval.every = 10" in message and "no epoch" in message
    assert "distill.select_eval.every = 0" in error_for({"distill": {"select_eval": {"every": 0}}})


def test_params_offer_the_official_test_set_selection():
    """The paper configuration carries the official script's selection PGD, and its documented
    source (conf/config.yaml) names test_fair_best on the select line."""
    params = load_params(REPO / "params.yaml")
    sel = params.distill.select_eval
    assert sel.n_samples is None and sel.steps == 20 and sel.every == 10
    assert sel.step == pytest.approx(0.003) and sel.eps == pytest.approx(8 / 255)
    line = next(l for l in (REPO / "conf" / "config.yaml").read_text().splitlines() if l.strip().startswith("select:"))
    assert "test_fair_best is the official script's selection" in line


def test_beta_milestones_follow_the_methods_lr_milestones_by_default():
    """The reference code decays ABSLD's beta with the learning rate: null resolves to the LR
    milestones the method trains with (distill.train changed by the method's own train)."""
    params = parse_params({"distill": {"train": {"epochs": 30, "milestones": [20, 25]},
                                       "reweighted_rslad": {"train": {"milestones": [10]}}}})
    assert params.distill.absld.beta_milestones is None
    assert params.distill.method_config("absld").beta_milestones == [20, 25]
    assert params.distill.method_config("reweighted_rslad").beta_milestones == [10]
    assert params.distill.method_config("rslad") is params.distill.rslad
    paper = load_params(REPO / "params.yaml").distill
    assert paper.method_config("absld").beta_milestones == [215, 260, 285]


def test_beta_milestones_that_differ_from_the_lr_need_beta_decoupled():
    message = error_for({"distill": {"train": {"milestones": [6]}, "absld": {"beta_milestones": [5]}}})
    assert "absld.beta_milestones [5]" in message and "[6]" in message
    assert "beta_decoupled" in message and "null" in message
    assert "reweighted_rslad" in error_for({"distill": {"reweighted_rslad": {"beta_milestones": [1]}}})
    # the same list (any order) is accepted; a different one when decoupled on purpose
    same = parse_params({"distill": {"train": {"milestones": [6, 8]}, "absld": {"beta_milestones": [8, 6]}}})
    assert same.distill.method_config("absld").beta_milestones == [8, 6]
    decoupled = parse_params({"distill": {"absld": {"beta_milestones": [5], "beta_decoupled": True}}})
    assert decoupled.distill.method_config("absld").beta_milestones == [5]


def test_unresolved_beta_milestones_fail_loudly_instead_of_never_decaying():
    from absld.params import AbsldConfig
    from absld.methods.absld import beta_after

    cfg = AbsldConfig()
    with pytest.raises(ValueError, match="unresolved"):
        beta_after(0.1, 1, cfg.beta_milestones, cfg.beta_gamma)
    assert beta_after(0.1, 5, [5, 8], 0.5) == pytest.approx(0.05) and beta_after(0.1, 6, [5, 8], 0.5) == 0.1


def test_the_cifar100_profile_holds_out_cfas_official_validation_split():
    """PKU-ML/CFA generate_validation.py, its CIFAR-100 branch: the first 25 training images of each
    class are the validation split (CIFAR-10: 100, our default)."""
    assert load_profile("cifar100", conf=REPO / "conf").data.val_per_class == 25
    assert load_profile("paper", conf=REPO / "conf").data.val_per_class == 100


def test_dafa_and_trix_take_their_codes_cifar100_lambda():
    """rucy74/DAFA arguments.py:62 (and TRIX's fork): --dafa_lambda 1.0 on CIFAR-10, 1.5 on CIFAR-100."""
    for name in ("dafa", "trix"):
        assert getattr(load_profile("cifar100", conf=REPO / "conf").distill, name).lam == 1.5
        assert getattr(load_profile("paper", conf=REPO / "conf").distill, name).lam == 1.0


@pytest.mark.parametrize("profile, classes", [("cifar100", 100), ("tinyimagenet", 200)])
def test_cfas_weight_average_starts_in_the_many_class_profiles(profile, classes):
    """With 100 or 200 classes the worst validation class's PGD accuracy is 0 (25 images each), so
    CIFAR-10's gate (0.24) would never open and "CFA" would ship plain weights: those profiles'
    gate passes then, as their comment states. The paper profile keeps the official 0.24."""
    import torch
    from torch import nn

    from absld.methods import MethodContext, build_method
    from absld.methods.base import ClassAccuracy
    from absld.params import AttackConfig

    def worst_class_zero(attack):
        robust = torch.full((classes,), 0.3, dtype=torch.float64)
        robust[7] = 0.0
        return ClassAccuracy(clean=torch.full((classes,), 0.6, dtype=torch.float64), robust=robust,
                             clean_total=0.6, robust_total=float(robust.mean()),
                             n=25 * classes)

    def averaged_epochs(cfa) -> int:
        method = build_method("cfa", cfa, MethodContext(num_classes=classes, attack=AttackConfig(),
                                                        student=nn.Linear(2, classes), validate=worst_class_zero))
        return sum(bool(method.on_epoch_end(epoch)["cfa_averaged_epochs"]) for epoch in range(1, 4))

    assert load_profile(profile, conf=REPO / "conf").data.val_per_class == 25
    assert averaged_epochs(load_profile(profile, conf=REPO / "conf").distill.cfa) == 3
    assert averaged_epochs(load_profile("paper", conf=REPO / "conf").distill.cfa) == 0


@pytest.mark.parametrize("name", ["frl_rw", "frl_rwrm"])
def test_checkpoint_selection_never_looks_inside_frls_hot_start(name):
    """FRL's first hot_start_epochs epochs are plain TRADES: selecting one of them would ship a model
    FRL never trained. The paper recipe's first LR milestone (75) falls inside its 100-epoch hot start."""
    paper = load_profile("paper", conf=REPO / "conf").distill
    for select in ("val_fair_best", "test_fair_best"):
        cfg = paper.model_copy(update={"select": select})
        hot = getattr(cfg, name).hot_start_epochs
        epochs = cfg.selection_epochs(name)
        assert epochs and min(epochs) == hot + 1 and epochs == list(range(hot + 1, max(epochs) + 1))
        assert min(cfg.selection_epochs("rslad")) == 10  # the others as before: every 10th epoch, then each
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["distill"]["select"] = "val_fair_best"
    raw["distill"][name]["hot_start_epochs"] = 140  # = its epochs: no fair epoch is left to choose
    with pytest.raises(ConfigError, match=f"picks no epoch of {name}'s 140 .* from its epoch 141 on"):
        parse_params(raw)
