"""One source per vocabulary (absld.vocab): the registries and the config's choices agree with it."""

from __future__ import annotations

from typing import get_args

import pytest

from absld import config, data, methods, report, vocab
import sys

import absld.attacks.autoattack  # noqa: F401 - the module (absld.attacks.autoattack is also a function's name)
from absld.vocab import ModelId


def test_every_registry_and_choice_derives_from_the_vocabulary():
    autoattack = sys.modules["absld.attacks.autoattack"]
    assert tuple(methods.METHODS) == vocab.METHOD_NAMES  # one class per method, in the vocabulary's order
    assert get_args(config.DistillMethod) == vocab.METHOD_NAMES == config.DISTILL_METHODS
    assert tuple(data.DATASETS) == vocab.DATASET_NAMES == get_args(config.Dataset)
    assert get_args(autoattack.AutoAttackName) == vocab.AA_ATTACK_NAMES == config.AA_ATTACKS
    assert set(autoattack.STANDARD_ATTACKS) <= set(vocab.AA_ATTACK_NAMES)
    assert {m: report.method_label(m) for m in vocab.METHOD_NAMES} == vocab.METHOD_LABELS
    assert all(report.dataset_label(d) == vocab.DATASET_LABELS[d] for d in vocab.DATASET_NAMES)


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
