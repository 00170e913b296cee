"""Property QA: the reference's first-decimal-number rule, valid ranges and MAE on hand values."""

from __future__ import annotations

import math

import pytest

from molm3d_core.evaluation import (
    ANY_NUMBER_PATTERN,
    PROPERTY_RANGES,
    PROPERTY_TASKS,
    ValidRange,
    mean_baseline,
    parse_answer,
    property_mae,
)


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("The HOMO for the input molecule is -5.850 eV.", -5.85),
        ("The molecular weight is 180.16 g/mol.", 180.16),
        ("It has 7 atoms and a LUMO of -0.50 eV", -0.5),  # the integer is skipped, the first decimal taken
        ("1.5e-3", 1.5),
        ("+2.0", 2.0),
        ("about 7 eV", None),  # integers do not match the reference regex
        ("I cannot tell.", None),
    ],
)
def test_parse_answer_takes_first_decimal_number(answer, value):
    assert parse_answer(answer) == value


def test_integers_parse_only_with_the_permissive_pattern():
    assert parse_answer("TPSA 40 A^2", ANY_NUMBER_PATTERN) == 40.0


def test_mae_and_valid_ratio_exclude_unparseable_and_out_of_range_answers():
    answers = [
        "The HOMO is -5.850 eV.",  # |-5.85 - -5.9| = 0.05
        "-6.1 eV",  # |-6.1 - -6.0| = 0.1
        "about 7 eV",  # integer: invalid
        "I don't know",  # unparseable: invalid
        "25.000 eV",  # outside (-20, 20): invalid
    ]
    scores = property_mae("homo", answers, [-5.9, -6.0, 7.0, 0.0, 25.0])
    assert scores.mae == pytest.approx(0.075)
    assert scores.valid_ratio == pytest.approx(0.4)
    assert (scores.n, scores.n_valid, scores.task) == (5, 2, "homo")


def test_range_bounds_follow_the_table():
    assert -19.99 in PROPERTY_RANGES["gap"] and 20.0 not in PROPERTY_RANGES["gap"]
    assert 0.0 not in PROPERTY_RANGES["mw"] and 0.0 in PROPERTY_RANGES["tpsa"]
    assert 0.0 not in PROPERTY_RANGES["energy"] and -11000.0 in PROPERTY_RANGES["energy"]
    assert set(PROPERTY_TASKS) == {
        "homo",
        "lumo",
        "gap",
        "energy",
        "mw",
        "logp",
        "tpsa",
        "complexity",
        "xtb_homo",
        "xtb_lumo",
    }
    assert str(ValidRange(0, 3000, low_inclusive=True)) == "[0, 3000)"


def test_no_valid_answer_gives_nan_mae_and_zero_ratio():
    scores = property_mae("mw", ["no idea", "5000.00 g/mol"], [100.0, 5000.0])
    assert math.isnan(scores.mae) and scores.valid_ratio == 0.0 and scores.n_valid == 0


def test_unknown_task_needs_a_range():
    with pytest.raises(KeyError):
        property_mae("dipole", ["1.0"], [1.0])
    assert property_mae("dipole", ["1.5"], [1.0], valid_range=ValidRange(0, 50)).mae == pytest.approx(0.5)


def test_mean_baseline_by_hand():
    # Train mean 2; test |1-2| + |4-2| = 3 over 2 -> 1.5.
    scores = mean_baseline([1.0, 2.0, 3.0], [1.0, 4.0], task="logp")
    assert scores.mae == pytest.approx(1.5)
    assert (scores.valid_ratio, scores.n, scores.task) == (1.0, 2, "logp")
    with pytest.raises(ValueError):
        mean_baseline([], [1.0])
