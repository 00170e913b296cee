"""Uni-Mol encoder: geometry in, per-atom states out; invariances and padding."""

from __future__ import annotations

import numpy as np
import torch

from molm3d_core.chem import collate, featurize_atoms
from molm3d_core.models import UniMolConfig, UniMolEncoder

SYMBOLS = ["C", "C", "O", "N", "C", "Cl"]
COORDS = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.5, 0.1, 0.0],
        [2.1, 1.2, 0.3],
        [-0.7, 1.2, -0.2],
        [-0.6, -1.3, 0.4],
        [3.0, -1.0, 0.8],
    ],
    dtype=np.float32,
)


def _encoder() -> UniMolEncoder:
    torch.manual_seed(0)
    return UniMolEncoder(UniMolConfig.tiny()).eval()


def _encode(enc: UniMolEncoder, symbols, coords) -> torch.Tensor:
    batch = collate([featurize_atoms(symbols, coords)])
    with torch.no_grad():
        states, _ = enc(batch["src_tokens"], batch["src_distance"], batch["src_edge_type"])
    return states[0]


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return (q if np.linalg.det(q) > 0 else -q).astype(np.float32)


def test_invariant_to_rotation_and_translation():
    enc = _encoder()
    ref = _encode(enc, SYMBOLS, COORDS)
    moved = COORDS @ _random_rotation(1).T + np.array([5.0, -3.0, 12.0], dtype=np.float32)
    torch.testing.assert_close(_encode(enc, SYMBOLS, moved), ref, atol=1e-4, rtol=1e-4)
    # ...but not to a change of geometry: the test can fail.
    bent = COORDS.copy()
    bent[5] += np.array([0.0, 1.0, 0.0], dtype=np.float32)
    assert not torch.allclose(_encode(enc, SYMBOLS, bent), ref, atol=1e-3)


def test_equivariant_to_atom_permutation():
    enc = _encoder()
    ref = _encode(enc, SYMBOLS, COORDS)
    perm = [3, 0, 5, 1, 4, 2]
    out = _encode(enc, [SYMBOLS[i] for i in perm], COORDS[perm])
    # Position 0 is [CLS] and the last is [SEP]; atoms sit at 1..N.
    torch.testing.assert_close(out[1:-1], ref[1:-1][perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_a_molecule():
    enc = _encoder()
    alone = _encode(enc, SYMBOLS[:3], COORDS[:3])
    batch = collate([featurize_atoms(SYMBOLS[:3], COORDS[:3]), featurize_atoms(SYMBOLS, COORDS)])
    with torch.no_grad():
        states, padding = enc(batch["src_tokens"], batch["src_distance"], batch["src_edge_type"])
    assert padding[0].tolist() == [False] * 5 + [True] * 3
    torch.testing.assert_close(states[0, :5], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(states).all()


def test_official_preset_shapes():
    cfg = UniMolConfig.official()
    with torch.device("meta"):
        enc = UniMolEncoder(cfg)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["embed_tokens.weight"] == (31, 512)
    assert shapes["gbf.mul.weight"] == (961, 1)
    assert shapes["gbf_proj.linear2.weight"] == (64, 128)
    assert shapes["encoder.layers.14.self_attn.in_proj.weight"] == (1536, 512)
    assert "encoder.layers.15.fc1.weight" not in shapes
