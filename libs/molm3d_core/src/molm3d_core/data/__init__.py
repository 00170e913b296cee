"""The instruction dataset (3D-MoIT style), built only from packaged sources, and its reader.

card = build_dataset(BuildConfig(Path("data/moit"), workers=2))   # or: molm3d data build -o data/moit
data = load_dataset("data/moit")                                  # molecules by id, examples per split
for molecule, example in data.examples("train", task="homo"): ...

Sources: QM9 (qm9pack==1.0.3: DFT geometries and its 15 DFT targets), ChEBI names, classes and
definitions (c3p==0.5.0), RDKit 2D descriptors, RDKit ETKDGv3+MMFF conformers; optionally GFN2-xTB
orbitals (tblite) under their own task names.

Layout of a dataset folder:

    DIR/card.json, DIR/README.md            dataset card (JSON; the same as Markdown)
    DIR/molecules.jsonl                     one line per molecule:
      {"mol_id": "qm9:000001" | "chebi:<InChIKey>", "source": "qm9" | "chebi", "split": "train" | "valid" | "test",
       "smiles": canonical, "name": ChEBI name | null, "scaffold": Murcko scaffold SMILES ("" if acyclic),
       "geometries": {"dft": {"symbols": [...], "coords": [[x, y, z], ...]},   # QM9 only (B3LYP geometry)
                      "etkdg": {"symbols": [...], "coords": [...]}},          # when the RDKit conformer succeeded
       "targets": {name: value}}  # property-head targets: RDKit descriptors; QM9's DFT targets (QM9_TARGETS)
      heavy atoms only, Å, 3 decimals, in each geometry's own atom order
    DIR/tasks/{train,valid,test}.jsonl      one line per example:
      {"mol_id", "task", "instruction", "answer", "label": float | null, "unit": "eV" | "g/mol" | "Å²" | null}
      task: homo lumo gap energy mw logp tpsa complexity caption classes identity xtb_homo xtb_lumo
    DIR/retrieval/test.jsonl                {"mol_id", "text"}: ChEBI test molecules and their captions (2,000)

c3p names ChEBI classes by id but its molecules only by SMILES and name, so ChEBI molecules are
identified by their InChIKey.
"""

from molm3d_core.data.build import RETRIEVAL_SIZE, BuildConfig, BuildError, build_dataset
from molm3d_core.data.chebi import ChebiClass, ChebiEntry, read_c3p
from molm3d_core.data.dataset import TASKS, Dataset, MoleculeRow, TaskRow, load_dataset
from molm3d_core.data.properties import HARTREE_TO_EV, PROPERTY_SPECS, PropertySpec, format_answer, rdkit_properties
from molm3d_core.data.qm9 import Qm9Molecule, read_qm9
from molm3d_core.data.questions import PARAPHRASES, choose_question
from molm3d_core.data.split import SPLITS, SplitFractions, murcko_scaffold, scaffold_split

__all__ = [
    "HARTREE_TO_EV",
    "PARAPHRASES",
    "PROPERTY_SPECS",
    "RETRIEVAL_SIZE",
    "SPLITS",
    "TASKS",
    "BuildConfig",
    "BuildError",
    "ChebiClass",
    "ChebiEntry",
    "Dataset",
    "MoleculeRow",
    "PropertySpec",
    "Qm9Molecule",
    "SplitFractions",
    "TaskRow",
    "build_dataset",
    "choose_question",
    "format_answer",
    "load_dataset",
    "murcko_scaffold",
    "rdkit_properties",
    "read_c3p",
    "read_qm9",
    "scaffold_split",
]
