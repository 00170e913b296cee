"""Question paraphrases per task, and the deterministic choice of one per (molecule, task).

Several wordings per task make the model answer the question rather than one memorised template.
Which wording a molecule gets is a seeded hash of (seed, mol_id, task): stable across builds, machines,
worker counts and Python's hash randomisation. The full lists go into the dataset card.
"""

from __future__ import annotations

import hashlib

from molm3d_core.prompts import CAPTION_INSTRUCTION

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "homo": (
        "What is the HOMO energy of this molecule?",
        "Please provide the highest occupied molecular orbital (HOMO) energy of this molecule.",
        "I would like to know the HOMO energy of the input molecule. Could you give it in eV?",
        "What is the energy of the highest occupied molecular orbital of the input molecule?",
        "Report the HOMO level of this molecule in electronvolts.",
    ),
    "lumo": (
        "What is the LUMO energy of this molecule?",
        "Please provide the lowest unoccupied molecular orbital (LUMO) energy of this molecule.",
        "I would like to know the LUMO energy of the input molecule. Could you give it in eV?",
        "What is the energy of the lowest unoccupied molecular orbital of the input molecule?",
        "Report the LUMO level of this molecule in electronvolts.",
    ),
    "gap": (
        "What is the HOMO-LUMO gap of this molecule?",
        "Please provide the energy gap between the HOMO and the LUMO of this molecule.",
        "How large is the HOMO-LUMO gap of the input molecule, in eV?",
        "What is the difference between the LUMO and HOMO energies of the input molecule?",
        "Report the frontier orbital gap of this molecule.",
    ),
    "energy": (
        "What is the total electronic energy of this molecule?",
        "Please provide the total electronic energy of the input molecule in eV.",
        "I would like to know the electronic energy of this molecule at its equilibrium geometry.",
        "What is the ground-state electronic energy of the input molecule?",
        "Report the total energy of this molecule without the zero-point vibrational energy.",
    ),
    "mw": (
        "What is the molecular weight of this molecule?",
        "Please provide the molecular weight of the input molecule.",
        "How heavy is this molecule, in g/mol?",
        "What is the molar mass of the input molecule?",
        "Could you tell me the molecular weight of this compound?",
    ),
    "logp": (
        "What is the LogP of this molecule?",
        "Please provide the octanol-water partition coefficient (LogP) of the input molecule.",
        "How lipophilic is this molecule? Give its LogP.",
        "What is the calculated LogP value of the input molecule?",
        "Could you tell me the LogP of this compound?",
    ),
    "tpsa": (
        "What is the topological polar surface area (TPSA) of this molecule?",
        "Please provide the TPSA of the input molecule.",
        "How large is the polar surface area of this molecule, in square angstroms?",
        "What is the topological polar surface area of the input molecule?",
        "Could you tell me the TPSA of this compound?",
    ),
    "complexity": (
        "What is the complexity of this molecule?",
        "Please provide the molecular complexity of the input molecule.",
        "How complex is this molecule? Give its complexity score.",
        "What is the Bertz complexity index of the input molecule?",
        "Could you tell me the structural complexity of this compound?",
    ),
    "caption": (
        CAPTION_INSTRUCTION,
        "Write a short description of this molecule.",
        "Please describe this molecule, including the chemical classes it belongs to.",
        "Could you give me a brief overview of the input molecule?",
        "Provide a description of the input molecule.",
    ),
    "classes": (
        "Which chemical classes does this molecule belong to?",
        "To which ChEBI classes does the input molecule belong?",
        "What kind of compound is this? List its chemical classes.",
        "Classify the input molecule into chemical classes.",
        "Please list the chemical classes of this molecule.",
    ),
    "identity": (
        "What is this molecule?",
        "What is the name of the input molecule?",
        "Identify the input molecule.",
        "Can you name this molecule and say what it is?",
        "Which compound is this?",
    ),
    "xtb_homo": (
        "What is the GFN2-xTB HOMO energy of this molecule?",
        "Please provide the HOMO energy of the input molecule computed with GFN2-xTB.",
        "At the GFN2-xTB level of theory, what is the HOMO of this molecule?",
        "What is the semi-empirical (xTB) HOMO energy of the input molecule?",
    ),
    "xtb_lumo": (
        "What is the GFN2-xTB LUMO energy of this molecule?",
        "Please provide the LUMO energy of the input molecule computed with GFN2-xTB.",
        "At the GFN2-xTB level of theory, what is the LUMO of this molecule?",
        "What is the semi-empirical (xTB) LUMO energy of the input molecule?",
    ),
}


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of `parts` that does not depend on the process (unlike `hash`)."""
    text = "\x00".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def choose_question(task: str, mol_id: str, seed: int) -> str:
    """The paraphrase of `task`'s question that molecule `mol_id` gets in a build with `seed`."""
    options = PARAPHRASES[task]
    return options[stable_hash(seed, mol_id, task) % len(options)]
