"""Test helpers shared across test modules."""

from __future__ import annotations


def molecule_batch(smiles: list[str], seed: int = 42):
    """Real RDKit conformers -> collated Uni-Mol features."""
    from molm3d_core.chem import ConformerOptions, collate, featurize, generate_conformer, parse_smiles

    conformers = [generate_conformer(parse_smiles(s), ConformerOptions(seed=seed)) for s in smiles]
    return collate([featurize(c) for c in conformers])


# Ethanol as a V2000 molblock (3D): the base of the malformed-block cases.
ETHANOL_MOLBLOCK = """ethanol
  molm3d          3D

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.5000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    2.0000    1.4000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  2  3  1  0
M  END
"""

TINY_MOLECULES = {
    "CCO": "ethanol is a primary alcohol",
    "c1ccccc1": "benzene is an aromatic hydrocarbon",
    "CC(=O)O": "acetic acid is a carboxylic acid",
    "c1ccncc1": "pyridine is an azaarene",
    "CCN": "ethylamine is a primary amine",
    "O=C=O": "carbon dioxide is a one-carbon compound",
}


def write_tiny_dataset(root, split="train"):
    """A dataset folder in the `molm3d data build` format, six real molecules, all in `split`.

    A test split also gets the retrieval pairs and a train task file (its labels feed the mean baseline).
    """
    import json
    from pathlib import Path

    from rdkit.Chem import Descriptors

    from molm3d_core.chem import generate_conformer, parse_smiles
    from molm3d_core.data.properties import rdkit_properties

    root = Path(root)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    molecules, tasks = [], []
    for i, (smiles, caption) in enumerate(TINY_MOLECULES.items()):
        record = parse_smiles(smiles)
        symbols, coords = generate_conformer(record).heavy_atoms()
        geometry = {"symbols": symbols, "coords": coords.round(3).tolist()}
        mol_id = f"tiny:{i}"
        molecules.append(
            {
                "mol_id": mol_id,
                "source": "tiny",
                "split": "train",
                "smiles": record.smiles,
                "name": None,
                "scaffold": "",
                "geometries": {"dft": geometry, "etkdg": geometry},
                "targets": rdkit_properties(record.mol),
            }
        )
        mw = Descriptors.MolWt(record.mol)
        tasks.append(
            {
                "mol_id": mol_id,
                "task": "caption",
                "instruction": "Describe the input molecule.",
                "answer": caption,
                "label": None,
                "unit": None,
            }
        )
        tasks.append(
            {
                "mol_id": mol_id,
                "task": "mw",
                "instruction": "What is the molecular weight?",
                "answer": f"The molecular weight of the input molecule is {mw:.2f} g/mol.",
                "label": round(mw, 2),
                "unit": "g/mol",
            }
        )
    (root / "molecules.jsonl").write_text("".join(json.dumps(m) + "\n" for m in molecules))
    (root / "tasks" / f"{split}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    if split == "test":
        train = [{**t, "mol_id": "train:" + t["mol_id"], "label": 100.0} for t in tasks if t["task"] == "mw"]
        (root / "tasks" / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in train))
        pairs = [{"mol_id": t["mol_id"], "text": t["answer"]} for t in tasks if t["task"] == "caption"]
        (root / "retrieval").mkdir(exist_ok=True)
        (root / "retrieval" / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root
