"""Answer sentences of numeric tasks read back to their labels; RDKit descriptors and paraphrases."""

from __future__ import annotations

import random
import re

import pytest
from rdkit import Chem

from molm3d_core.data import PARAPHRASES, PROPERTY_SPECS, TASKS, choose_question, format_answer, rdkit_properties
from molm3d_core.prompts import parse_number

REFERENCE_NUMBER = re.compile(r"-?\d+\.\d+")  # the reference evaluation's parse: first decimal number
VALUES = [0.0, -0.0004, 0.0049, 1.0, -5.8501, 3.14159, 27.2114, 180.1589, -11034.5124, 123456.789, -0.005]


@pytest.mark.parametrize("task", sorted(PROPERTY_SPECS))
@pytest.mark.parametrize("value", VALUES)
def test_answer_parses_back_to_its_label(task: str, value: float) -> None:
    answer, label = format_answer(task, value)
    spec = PROPERTY_SPECS[task]
    parsed = parse_number(answer)
    assert parsed is not None and parsed.value == label
    assert float(REFERENCE_NUMBER.search(answer).group()) == label  # the full value, first in the sentence
    assert abs(label - value) <= 0.5 * 10**-spec.decimals + 1e-12
    assert parsed.unit == spec.unit


def test_reference_answer_formats() -> None:
    assert format_answer("homo", -5.85) == ("The HOMO for the input molecule is -5.850 eV.", -5.85)
    assert format_answer("mw", 180.1589)[0] == "The molecular weight of the input molecule is 180.16 g/mol."
    assert (
        format_answer("energy", -11034.5124)[0] == "The total electronic energy of the input molecule is -11034.512 eV."
    )
    assert format_answer("tpsa", 63.6)[0].endswith("is 63.60 Å².")


def test_rdkit_properties_of_aspirin() -> None:
    props = rdkit_properties(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))
    assert props["mw"] == pytest.approx(180.159, abs=1e-3)
    assert props["tpsa"] == pytest.approx(63.6, abs=1e-2)
    assert props["logp"] == pytest.approx(1.31, abs=1e-2)
    assert props["complexity"] > 0


def test_every_task_has_several_paraphrases() -> None:
    assert set(PARAPHRASES) == set(TASKS)
    for task, questions in PARAPHRASES.items():
        assert len(questions) >= 4, task
        assert len(set(questions)) == len(questions), task


def test_question_choice_is_deterministic_and_varied() -> None:
    ids = [f"qm9:{i:06d}" for i in range(200)]
    first = [choose_question("homo", i, seed=42) for i in ids]
    assert first == [choose_question("homo", i, seed=42) for i in ids]
    assert set(first) == set(PARAPHRASES["homo"])  # all wordings are used
    assert first != [choose_question("homo", i, seed=7) for i in ids]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)  # independent of call order
    assert {i: choose_question("homo", i, seed=42) for i in shuffled} == dict(zip(ids, first, strict=True))
