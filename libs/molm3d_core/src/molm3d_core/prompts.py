"""Prompt templates and the parsing of property answers.

The reference prompt spends ~45 tokens on boilerplate; every token costs on CPU, so our small model
uses a compact template. Both are named here and a checkpoint records which one it was trained with.

One prompt holds 0, 1 or more molecules, earlier turns of a conversation and a system line; with one
molecule and nothing else it is exactly the prompt the models were trained on (`TEMPLATES`). The
rule for more: the conversation's first question is written as that single-turn prompt, with all its
molecules; each earlier answer follows its question as training targets follow a prompt (one space,
then the answer), and each later question is appended the way the first one was asked.

compact (2 molecules, one earlier turn, a system line):
    {system}
    Molecule: {smiles A} <mol>x8
    Molecule: {smiles B} <mol>x8
    Question: {q1}
    Answer: {a1}
    Question: {q2}
    Answer:
  with no molecule, the Molecule lines are left out ("Question: ...\nAnswer:").

reference (same conversation):
    {system}
    Below is an instruction that describes a task, paired with input molecules. Write a response ...
    Instruction: {q1}
    Input molecule: {smiles A} <mol>x8.
    Input molecule: {smiles B} <mol>x8.
    Response:  {a1}
    Instruction: {q2}
    Response: (and the template's space)
  The header says "paired with an input molecule" for one, "paired with input molecules" for more, and
  drops the pairing for none (Alpaca's instruction-only header); "Response: " ends with a space, so an
  earlier answer follows after two (the template's space and the target's).

User text (the question, the earlier turns, the system line) and the SMILES may not contain `<mol>`:
it would create placeholders that no molecule fills. `MoLM3D.prompt` also refuses the LM tokenizer's
other special tokens (`<|endoftext|>`, `<|im_start|>`, ...): the tokenizer would read them as control
tokens, not as the text the user wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MOL_TOKEN = "<mol>"  # one placeholder per query token; the LM splices molecule embeddings there
# The single-turn prompts, one molecule: what `build_prompt` writes for them, byte for byte.
TEMPLATES = {
    "reference": (
        "Below is an instruction that describes a task, paired with an input molecule. Write a response "
        "that appropriately completes the request.\nInstruction: {instruction}\nInput molecule: {smiles}"
        "{mol_tokens}.\nResponse: "
    ),
    "compact": "Molecule: {smiles}{mol_tokens}\nQuestion: {instruction}\nAnswer:",
}
CAPTION_INSTRUCTION = "Describe the input molecule."
_REFERENCE_HEADER = (
    "Below is an instruction that describes a task{pairing}. Write a response that appropriately completes the "
    "request.\n"
)


def build_prompt(
    template: str,
    instruction: str,
    smiles: str | Sequence[str],
    num_query_tokens: int,
    max_smiles_chars: int,
    *,
    history: Sequence[tuple[str, str]] = (),
    system: str = "",
    reserved: Sequence[str] = (MOL_TOKEN,),
) -> str:
    """One prompt with `num_query_tokens` `<mol>` placeholders per molecule (SMILES truncated to
    `max_smiles_chars`, as in the reference).

    `smiles`: one molecule's SMILES, or a list of 0, 1 or more (each gets its own placeholders, in
    order: the LM's molecule embeddings must come in that order). `history`: earlier (question, answer)
    pairs, oldest first. `system`: a line written before everything. With 0 placeholders per molecule
    it is the SMILES-only prompt of the baseline. ValueError when user text or a SMILES contains
    `<mol>` or another of the `reserved` strings, or the template is unknown.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    molecules = [smiles] if isinstance(smiles, str) else list(smiles)
    reserved = (MOL_TOKEN, *(r for r in reserved if r and r != MOL_TOKEN))
    _refuse_reserved("instruction", instruction, reserved)
    _refuse_reserved("system", system, reserved)
    for i, (question, answer) in enumerate(history):
        _refuse_reserved(f"history[{i}].question", question, reserved)
        _refuse_reserved(f"history[{i}].answer", answer, reserved)
    for i, s in enumerate(molecules):
        _refuse_reserved(f"molecules[{i}].smiles", s, reserved)
    mol_tokens = " " + MOL_TOKEN * num_query_tokens if num_query_tokens else ""
    mols = [s[:max_smiles_chars] + mol_tokens for s in molecules]
    turns: list[tuple[str, str | None]] = [(q.strip(), a.strip()) for q, a in history]
    turns.append((instruction.strip(), None))
    parts = [system.strip() + "\n"] if system.strip() else []
    if template == "compact":
        parts += [f"Molecule: {m}\n" for m in mols]
        for question, answer in turns:
            parts.append(f"Question: {question}\nAnswer:")
            if answer is not None:
                parts.append(f" {answer}\n")
    else:
        pairing = {0: "", 1: ", paired with an input molecule"}.get(len(mols), ", paired with input molecules")
        parts.append(_REFERENCE_HEADER.format(pairing=pairing))
        for k, (question, answer) in enumerate(turns):
            parts.append(f"Instruction: {question}\n")
            if k == 0:
                parts += [f"Input molecule: {m}.\n" for m in mols]
            parts.append("Response: ")
            if answer is not None:
                parts.append(f" {answer}\n")
    prompt = "".join(parts)
    if prompt.count(MOL_TOKEN) != len(mols) * num_query_tokens:  # a guard: no join of the parts forms one
        raise ValueError(f"the prompt's text may not contain {MOL_TOKEN}")
    return prompt


def _refuse_reserved(name: str, text: str, reserved: Sequence[str]) -> None:
    for token in reserved:
        if token in text:
            raise ValueError(f"{name} may not contain {token}")


# The reference takes the first decimal number; integers are accepted too (e.g. "TPSA 40 A^2").
_NUMBER_UNIT = re.compile(r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(eV|g/mol|Å²|Å\^2|A\^2|kcal/mol|Hartree|Debye)?")


@dataclass(frozen=True)
class ParsedNumber:
    value: float
    unit: str | None


def parse_number(answer: str) -> ParsedNumber | None:
    """The first number in an answer and the unit right after it, if any."""
    match = _NUMBER_UNIT.search(answer)
    if match is None:
        return None
    unit = match.group(2)
    if unit in ("Å^2", "A^2"):
        unit = "Å²"
    return ParsedNumber(float(match.group(1)), unit)
