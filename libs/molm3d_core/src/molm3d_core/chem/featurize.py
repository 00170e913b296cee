"""Uni-Mol featurisation: heavy atoms and coordinates -> encoder inputs.

Follows the "mol_pre_no_h_220816" preprocessing of the reference encoder: hydrogens removed, at most
`max_atoms` heavy atoms (a seeded random subset above that), coordinates mean-centred without scaling,
[CLS] and [SEP] added at the origin, a full Euclidean distance matrix and pair types
`a_i * 31 + a_j` over the whole token sequence (special tokens included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from molm3d_core.errors import ErrorCode, MoleculeError

if TYPE_CHECKING:
    import torch

    from molm3d_core.chem.conformers import Conformer

ATOM_DICTIONARY: tuple[str, ...] = (
    "[PAD]",
    "[CLS]",
    "[SEP]",
    "[UNK]",
    "C",
    "N",
    "O",
    "S",
    "H",
    "Cl",
    "F",
    "Br",
    "I",
    "Si",
    "P",
    "B",
    "Na",
    "K",
    "Al",
    "Ca",
    "Sn",
    "As",
    "Hg",
    "Fe",
    "Zn",
    "Cr",
    "Se",
    "Gd",
    "Au",
    "Li",
    "[MASK]",
)
PAD, CLS, SEP, UNK, MASK = 0, 1, 2, 3, 30
NUM_ATOM_TYPES = len(ATOM_DICTIONARY)
DEFAULT_MAX_ATOMS = 256

# Only real elements map to a token; special symbols such as "[MASK]" are not valid atoms.
_ELEMENT_TOKENS: dict[str, int] = {sym: i for i, sym in enumerate(ATOM_DICTIONARY) if not sym.startswith("[")}
KNOWN_ELEMENTS: frozenset[str] = frozenset(_ELEMENT_TOKENS)


def unknown_elements(symbols: Sequence[str]) -> list[str]:
    """Element symbols outside the encoder's dictionary, sorted and de-duplicated."""
    return sorted({s for s in symbols if s not in _ELEMENT_TOKENS})


def unknown_element_message(elements: Sequence[str]) -> str:
    """The user-facing reason for an UNSUPPORTED_ELEMENT error."""
    noun = "element" if len(elements) == 1 else "elements"
    verb = "is" if len(elements) == 1 else "are"
    known = " ".join(_ELEMENT_TOKENS)
    return f"{noun} {', '.join(elements)} {verb} not in the encoder's atom dictionary (known: {known})"


@dataclass
class MoleculeFeatures:
    """Encoder inputs for one molecule; L = N + 2 tokens for N heavy atoms.

    atom_tokens: (L,) int64 -- [CLS], one token per heavy atom, [SEP].
    coordinates: (L, 3) float32, Å -- heavy atoms mean-centred; [CLS]/[SEP] at the origin.
    distances: (L, L) float32, Å -- Euclidean distances between all tokens' coordinates.
    edge_types: (L, L) int64 -- atom_tokens[i] * NUM_ATOM_TYPES + atom_tokens[j].
    """

    atom_tokens: np.ndarray
    coordinates: np.ndarray
    distances: np.ndarray
    edge_types: np.ndarray

    @property
    def num_atoms(self) -> int:
        """Heavy atoms encoded (special tokens excluded)."""
        return int(self.atom_tokens.shape[0]) - 2


def featurize_atoms(
    symbols: Sequence[str],
    coordinates: np.ndarray,
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    seed: int = 1,
    unknown: Literal["error", "unk"] = "error",
) -> MoleculeFeatures:
    """Featurise atoms given as element symbols and (N, 3) coordinates in Å.

    Hydrogens ("H") are dropped. Above `max_atoms` heavy atoms, a subset of exactly `max_atoms` is kept,
    chosen with a numpy generator seeded by `seed` and kept in input order. Elements outside
    ATOM_DICTIONARY raise UNSUPPORTED_ELEMENT, or become [UNK] with `unknown="unk"`.
    Raises MoleculeError: EMPTY_MOLECULE without heavy atoms; INVALID_REQUEST for coordinates that do not
    match the symbols or are not finite.
    """
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be positive, got {max_atoms}")
    coords = np.asarray(coordinates, dtype=np.float64)
    if coords.ndim != 2 or coords.shape != (len(symbols), 3):
        raise MoleculeError(
            ErrorCode.INVALID_REQUEST,
            f"coordinates must have shape ({len(symbols)}, 3) for {len(symbols)} atoms, got {coords.shape}",
        )
    if not np.isfinite(coords).all():
        raise MoleculeError(ErrorCode.INVALID_REQUEST, "coordinates contain NaN or infinite values")

    heavy = [i for i, s in enumerate(symbols) if s != "H"]
    if not heavy:
        raise MoleculeError(ErrorCode.EMPTY_MOLECULE, "molecule has no heavy atoms")
    heavy_symbols = [symbols[i] for i in heavy]
    missing = unknown_elements(heavy_symbols)
    if missing and unknown == "error":
        raise MoleculeError(ErrorCode.UNSUPPORTED_ELEMENT, unknown_element_message(missing))

    tokens = np.array([_ELEMENT_TOKENS.get(s, UNK) for s in heavy_symbols], dtype=np.int64)
    xyz = coords[heavy]
    if len(heavy) > max_atoms:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(heavy), size=max_atoms, replace=False))
        tokens, xyz = tokens[keep], xyz[keep]
    xyz = xyz - xyz.mean(axis=0)

    tokens = np.concatenate([[CLS], tokens, [SEP]]).astype(np.int64)
    xyz = np.concatenate([np.zeros((1, 3)), xyz, np.zeros((1, 3))]).astype(np.float32)
    # Distances from the float32 coordinates the encoder sees, computed in float64 for accuracy.
    diff = xyz.astype(np.float64)[:, None, :] - xyz.astype(np.float64)[None, :, :]
    distances = np.sqrt((diff**2).sum(axis=-1)).astype(np.float32)
    edge_types = tokens[:, None] * NUM_ATOM_TYPES + tokens[None, :]
    return MoleculeFeatures(tokens, xyz, distances, edge_types)


def featurize(
    conformer: Conformer,
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    seed: int = 1,
    unknown: Literal["error", "unk"] = "error",
) -> MoleculeFeatures:
    """Featurise a generated conformer's heavy atoms; see `featurize_atoms` for the options."""
    symbols, coords = conformer.heavy_atoms()
    return featurize_atoms(symbols, coords, max_atoms=max_atoms, seed=seed, unknown=unknown)


def collate(features: Sequence[MoleculeFeatures]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence L with [PAD] = 0 (zeros for coordinates and distances).

    Returns "src_tokens" (B, L) long, "src_coord" (B, L, 3) float32, "src_distance" (B, L, L) float32,
    "src_edge_type" (B, L, L) long and "padding_mask" (B, L) bool, True at padding.
    """
    # torch is imported here, not at the top: the conformer service imports this package without
    # ever collating, and importing torch costs each of its replicas ~250 MB.
    import torch

    if not features:
        raise ValueError("collate needs at least one molecule")
    batch, length = len(features), max(f.atom_tokens.shape[0] for f in features)
    tokens = torch.full((batch, length), PAD, dtype=torch.long)
    coords = torch.zeros((batch, length, 3), dtype=torch.float32)
    distances = torch.zeros((batch, length, length), dtype=torch.float32)
    edge_types = torch.zeros((batch, length, length), dtype=torch.long)
    for b, f in enumerate(features):
        n = f.atom_tokens.shape[0]
        tokens[b, :n] = torch.from_numpy(f.atom_tokens)
        coords[b, :n] = torch.from_numpy(f.coordinates)
        distances[b, :n, :n] = torch.from_numpy(f.distances)
        edge_types[b, :n, :n] = torch.from_numpy(f.edge_types)
    return {
        "src_tokens": tokens,
        "src_coord": coords,
        "src_distance": distances,
        "src_edge_type": edge_types,
        "padding_mask": tokens.eq(PAD),
    }
