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


# -- one builder for Caption, Ask and chat: molecules, history, system ------------------------------------

MOLS8 = " " + "<mol>" * 8
REFERENCE_ONE = (
    "Below is an instruction that describes a task, paired with an input molecule. Write a response that "
    "appropriately completes the request.\nInstruction: What is the LUMO?\nInput molecule: CCO"
    + MOLS8
    + ".\nResponse: "
)
COMPACT_ONE = "Molecule: CCO" + MOLS8 + "\nQuestion: What is the LUMO?\nAnswer:"


@pytest.mark.parametrize(("template", "literal"), [("reference", REFERENCE_ONE), ("compact", COMPACT_ONE)])
@pytest.mark.parametrize("smiles", ["CCO", ["CCO"]], ids=["str", "list"])
def test_one_molecule_gives_the_trained_prompt_byte_for_byte(template, literal, smiles):
    # the prompts the checkpoints were trained on: a str and a one-item list give the same bytes
    assert build_prompt(template, " What is the LUMO? ", smiles, 8, 96) == literal
    assert build_prompt(template, "What is the LUMO?", smiles, 8, 96, history=(), system="") == literal


def test_smiles_only_prompt_is_unchanged():
    assert build_prompt("compact", "Describe.", "CCO", 0, 96) == "Molecule: CCO\nQuestion: Describe.\nAnswer:"


def test_two_molecules_each_get_their_own_placeholders_in_order():
    compact = build_prompt("compact", "Which is larger?", ["CCO", "c1ccccc1"], 8, 96)
    assert compact == f"Molecule: CCO{MOLS8}\nMolecule: c1ccccc1{MOLS8}\nQuestion: Which is larger?\nAnswer:"
    reference = build_prompt("reference", "Which is larger?", ["CCO", "c1ccccc1"], 8, 4)
    assert reference == (
        "Below is an instruction that describes a task, paired with input molecules. Write a response that "
        f"appropriately completes the request.\nInstruction: Which is larger?\nInput molecule: CCO{MOLS8}.\n"
        f"Input molecule: c1cc{MOLS8}.\nResponse: "
    )


def test_no_molecule_gives_a_plain_question():
    assert build_prompt("compact", "What is water?", [], 8, 96) == "Question: What is water?\nAnswer:"
    assert build_prompt("reference", "What is water?", [], 8, 96) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\nInstruction: What is water?\nResponse: "
    )


def test_history_and_system_are_replayed_before_the_question():
    history = [("What is it?", " Ethanol. "), ("Is it toxic?", "In large amounts.")]
    compact = build_prompt("compact", "Its boiling point?", "CCO", 2, 96, history=history, system=" Be brief. ")
    assert compact == (
        "Be brief.\nMolecule: CCO <mol><mol>\nQuestion: What is it?\nAnswer: Ethanol.\n"
        "Question: Is it toxic?\nAnswer: In large amounts.\nQuestion: Its boiling point?\nAnswer:"
    )
    reference = build_prompt("reference", "Its boiling point?", "CCO", 2, 96, history=history[:1], system="Be brief.")
    assert reference == (
        "Be brief.\nBelow is an instruction that describes a task, paired with an input molecule. Write a response "
        "that appropriately completes the request.\nInstruction: What is it?\nInput molecule: CCO <mol><mol>.\n"
        "Response:  Ethanol.\nInstruction: Its boiling point?\nResponse: "
    )
    # the first turn is the single-turn prompt: a conversation continues what the model was trained on
    for template in ("compact", "reference"):
        first = build_prompt(template, "What is it?", "CCO", 2, 96)
        assert build_prompt(template, "Next?", "CCO", 2, 96, history=history).startswith(first + " Ethanol.\n")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"instruction": "Fill <mol> in"}, "instruction"),
        ({"system": "you see <mol>"}, "system"),
        ({"history": [("ok", "fine"), ("a <mol>", "b")]}, r"history\[1\].question"),
        ({"history": [("ok", "<mol><mol>")]}, r"history\[0\].answer"),
        ({"smiles": ["CCO", "C<mol>C"]}, r"molecules\[1\].smiles"),
        ({"smiles": "<mol>"}, r"molecules\[0\].smiles"),
    ],
)
@pytest.mark.parametrize("template", ["compact", "reference"])
def test_user_text_may_not_create_placeholders(template, kwargs, field):
    args = {"instruction": "What is it?", "smiles": "CCO", **kwargs}
    extra = {k: args.pop(k) for k in ("history", "system") if k in args}
    with pytest.raises(ValueError, match=f"^{field} may not contain <mol>$"):
        build_prompt(template, args["instruction"], args["smiles"], 8, 96, **extra)


@pytest.mark.parametrize("template", ["compact", "reference"])
def test_reserved_strings_are_refused_as_mol_is(template):
    reserved = ("<|endoftext|>", "<mol>")
    assert build_prompt(template, "a <|endoftext|>", "CCO", 8, 96)  # not reserved unless given
    with pytest.raises(ValueError, match=r"^instruction may not contain <\|endoftext\|>$"):
        build_prompt(template, "a <|endoftext|>", "CCO", 8, 96, reserved=reserved)
    with pytest.raises(ValueError, match=r"^instruction may not contain <mol>$"):  # <mol> always
        build_prompt(template, "a <mol>", "CCO", 8, 96, reserved=())


def test_unknown_template_is_a_value_error():
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'"):
        build_prompt("chatml", "q", "CCO", 8, 96)
