"""Prompt templates and the parsing of property answers.

The reference prompt spends ~45 tokens on boilerplate; every token costs on CPU, so our small model
uses a compact template. Both are named here and a checkpoint records which one it was trained with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MOL_TOKEN = "<mol>"  # one placeholder per query token; the LM splices molecule embeddings there
TEMPLATES = {
    "reference": (
        "Below is an instruction that describes a task, paired with an input molecule. Write a response "
        "that appropriately completes the request.\nInstruction: {instruction}\nInput molecule: {smiles}"
        "{mol_tokens}.\nResponse: "
    ),
    "compact": "Molecule: {smiles}{mol_tokens}\nQuestion: {instruction}\nAnswer:",
}
CAPTION_INSTRUCTION = "Describe the input molecule."


def build_prompt(template: str, instruction: str, smiles: str, num_query_tokens: int, max_smiles_chars: int) -> str:
    """One prompt with `num_query_tokens` `<mol>` placeholders (SMILES truncated, as in the reference).

    With 0 placeholders it is the SMILES-only prompt of the baseline.
    """
    mol_tokens = " " + MOL_TOKEN * num_query_tokens if num_query_tokens else ""
    return TEMPLATES[template].format(
        instruction=instruction.strip(), smiles=smiles[:max_smiles_chars], mol_tokens=mol_tokens
    )


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
