"""One source per vocabulary (absld.vocab): the registries and the config's choices agree with it."""

from __future__ import annotations

from typing import get_args

import pytest

from absld import data, labels, methods, vocab
import sys

import absld.evaluate.autoattack  # noqa: F401 - the module (absld.evaluate.autoattack is also a function's name)
from absld.params import AnalyzeConfig, AutoAttackConfig, DataConfig, DistillConfig
from absld.vocab import ModelId


def test_every_registry_and_choice_derives_from_the_vocabulary():
    autoattack = sys.modules["absld.evaluate.autoattack"]
    assert tuple(methods.METHODS) == vocab.METHOD_NAMES  # one class per method, in the vocabulary's order
    # the params models' choices (config.DistillMethod / DISTILL_METHODS / Dataset / AA_ATTACKS were removed
    # as duplicates): each Literal is the vocabulary's, so a list that drifts fails here
    assert get_args(AnalyzeConfig.model_fields["reference"].annotation) == vocab.METHOD_NAMES
    (distill_method,) = get_args(DistillConfig.model_fields["methods"].annotation)  # list[MethodName]
    assert get_args(distill_method) == vocab.METHOD_NAMES
    assert tuple(data.DATASETS) == vocab.DATASET_NAMES == get_args(DataConfig.model_fields["dataset"].annotation)
    assert get_args(autoattack.AutoAttackName) == vocab.AA_ATTACK_NAMES
    aa_attacks = [a for a in get_args(AutoAttackConfig.model_fields["attacks"].annotation) if a is not type(None)]
    assert [get_args(get_args(a)[0]) for a in aa_attacks] == [vocab.AA_ATTACK_NAMES]  # list[AutoAttackName] | None
    assert set(autoattack.STANDARD_ATTACKS) <= set(vocab.AA_ATTACK_NAMES)
    assert {m: labels.method_label(m) for m in vocab.METHOD_NAMES} == vocab.METHOD_LABELS
    assert all(labels.dataset_label(d) == vocab.DATASET_LABELS[d] for d in vocab.DATASET_NAMES)


@pytest.mark.parametrize("text, method, seed", [("teacher", None, None), ("absld/seed0", "absld", 0),
                                                ("fair_rslad/seed12", "fair_rslad", 12)])
def test_model_ids_parse_and_print_back(text, method, seed):
    model = ModelId.parse(text)
    assert (model.method, model.seed, model.is_teacher) == (method, seed, method is None)
    assert str(model) == text


@pytest.mark.parametrize("text", ["absld", "absld/seed", "absld/seedx", "nope/seed0", "teacher/seed0", "ABSLD/seed0"])
def test_a_bad_model_id_names_the_forms_allowed(text):
    with pytest.raises(ValueError, match="'teacher' or '<method>/seed<S>'"):
        ModelId.parse(text)


def test_model_ids_are_canonical():
    assert str(ModelId.parse("sat/seed007")) == "sat/seed7"
