"""Chemistry: read molecules, generate 3D conformers, featurise them for the Uni-Mol encoder, draw them.

records = read_inputs(["ligands.sdf", "CCO ethanol"])        # MoleculeRecord | MoleculeError
conformer = generate_conformer(record)                       # explicit fallback chain, seeded
batch = collate([featurize(conformer)])                      # padded tensors for the encoder
svg = depict_svg(record.smiles, 240, 180)                    # 2D drawing, self-contained SVG
xyz = xyz_block(*conformer.heavy_atoms())                    # heavy atoms in 3D as XYZ text
"""

from molm3d_core.chem.conformers import Conformer, ConformerOptions, generate_conformer
from molm3d_core.chem.depict import depict_svg, xyz_block
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
    "depict_svg",
    "detect_format",
    "featurize",
    "featurize_atoms",
    "generate_conformer",
    "parse_smiles",
    "parse_text",
    "read_inputs",
    "xyz_block",
]
