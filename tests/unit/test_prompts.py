"""Prompt building and the parsing of numbers and units out of answers."""

from __future__ import annotations

import pytest

from molm3d_core.prompts import build_prompt, parse_number


def test_prompt_has_one_placeholder_per_query_and_truncates_smiles():
    p = build_prompt("reference", "What is the LUMO?", "C" * 200, num_query_tokens=8, max_smiles_chars=96)
    assert p.count("<mol>") == 8
    assert "C" * 96 + " <mol>" in p and "C" * 97 not in p
    assert p.endswith("Response: ") and "Instruction: What is the LUMO?" in p


@pytest.mark.parametrize(
    ("answer", "value", "unit"),
    [
        ("The HOMO for the input molecule is -5.850 eV.", -5.85, "eV"),
        ("Its molecular weight is 180.16 g/mol", 180.16, "g/mol"),
        ("TPSA: 63.6 A^2", 63.6, "Å²"),
        ("about 12 kcal/mol", 12.0, "kcal/mol"),
        ("LogP is 1.31", 1.31, None),
    ],
)
def test_parse_number_and_unit(answer, value, unit):
    parsed = parse_number(answer)
    assert parsed is not None and parsed.value == pytest.approx(value) and parsed.unit == unit


def test_no_number_gives_none():
    assert parse_number("I do not know.") is None
