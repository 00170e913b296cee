"""Chemistry: read molecules, generate 3D conformers, featurise them for the Uni-Mol encoder.

records = read_inputs(["ligands.sdf", "CCO ethanol"])        # MoleculeRecord | MoleculeError
conformer = generate_conformer(record)                       # explicit fallback chain, seeded
batch = collate([featurize(conformer)])                      # padded tensors for the encoder
"""

from molm3d_core.chem.conformers import Conformer, ConformerOptions, generate_conformer
from molm3d_core.chem.featurize import (
    ATOM_DICTIONARY,
    CLS,
    MASK,
    NUM_ATOM_TYPES,
    PAD,
    SEP,
    UNK,
    MoleculeFeatures,
    collate,
    featurize,
    featurize_atoms,
)
from molm3d_core.chem.inputs import (
    FORMATS,
    InputLimits,
    MoleculeRecord,
    count_records,
    detect_format,
    parse_smiles,
    parse_text,
    read_inputs,
)

__all__ = [
    "ATOM_DICTIONARY",
    "CLS",
    "FORMATS",
    "MASK",
    "NUM_ATOM_TYPES",
    "PAD",
    "SEP",
    "UNK",
    "Conformer",
    "ConformerOptions",
    "InputLimits",
    "MoleculeFeatures",
    "MoleculeRecord",
    "collate",
    "count_records",
    "detect_format",
    "featurize",
    "featurize_atoms",
    "generate_conformer",
    "parse_smiles",
    "parse_text",
    "read_inputs",
]
