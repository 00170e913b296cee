"""Q-Former: attends to atoms (not padding), loads BERT exactly, causal captioning mask."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertModel

from molm3d_core.assets import minilm_dir
from molm3d_core.models import QFormer, QFormerConfig


def _tiny() -> QFormer:
    torch.manual_seed(0)
    return QFormer(QFormerConfig.tiny()).eval()


def test_queries_attend_to_atoms_not_padding():
    q = _tiny()
    torch.manual_seed(1)
    atoms = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False  # molecule 0 has 5 atoms and 4 padding rows
    with torch.no_grad():
        out = q(atoms, mask)[:, :8]
        garbage = atoms.clone()
        garbage[0, 5:] = torch.randn(4, 32) * 10
        out_garbage = q(garbage, mask)[:, :8]
        alone = q(atoms[:1, :5], mask[:1, :5])[:, :8]
        moved_atom = atoms.clone()
        moved_atom[0, 2] += 1.0
        out_moved = q(moved_atom, mask)[:, :8]
        # The reference's bug: the padding mask (True at padding) used as an attend mask.
        out_wrong_polarity = q(atoms, ~mask)[:, :8]
    torch.testing.assert_close(out_garbage, out)  # padding values are ignored
    torch.testing.assert_close(alone, out[:1], atol=1e-5, rtol=1e-5)  # same as without padding rows
    assert not torch.allclose(out_moved[0], out[0], atol=1e-4)  # real atoms are read
    assert not torch.allclose(out_wrong_polarity[0], out[0], atol=1e-4)


def test_text_branch_equals_minilm_bert():
    """The small preset's BERT layers are all-MiniLM-L6-v2 exactly (token type folded into positions)."""
    q = QFormer(QFormerConfig.small()).eval()
    q.load_bert(minilm_dir())
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    enc = tok(["benzene is an aromatic hydrocarbon", "a short one"], padding=True, return_tensors="pt")
    bert = BertModel.from_pretrained(minilm_dir(), add_pooling_layer=False).eval()
    with torch.no_grad():
        ours = q(None, None, enc["input_ids"], enc["attention_mask"], use_queries=False)
        theirs = bert(**enc).last_hidden_state
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_query_ffn_starts_as_copy_of_text_ffn():
    q = QFormer(QFormerConfig.small())
    q.load_bert(minilm_dir())
    layer = q.bert.encoder.layer[3]
    torch.testing.assert_close(layer.intermediate_query.dense.weight, layer.intermediate.dense.weight)
    torch.testing.assert_close(layer.output_query.LayerNorm.weight, layer.output.LayerNorm.weight)
    assert [i for i, l in enumerate(q.bert.encoder.layer) if l.crossattention is not None] == [0, 2, 4]


def test_causal_mode_queries_do_not_see_text_and_text_does_not_see_the_future():
    q = _tiny()
    atoms = torch.randn(1, 6, 32)
    mask = torch.ones(1, 6, dtype=torch.bool)
    ids = torch.tensor([[101, 2023, 2003, 1037, 102]])
    ids2 = ids.clone()
    ids2[0, 3] = 4937
    with torch.no_grad():
        a = q(atoms, mask, ids, text_mode="causal")
        b = q(atoms, mask, ids2, text_mode="causal")
        queries_only = q(atoms, mask)
        bi_a = q(atoms, mask, ids)
        bi_b = q(atoms, mask, ids2)
    torch.testing.assert_close(a[:, :8], queries_only, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:, : 8 + 3], b[:, : 8 + 3])  # positions before the change are unchanged
    assert not torch.allclose(a[:, 8 + 3], b[:, 8 + 3])
    assert not torch.allclose(bi_a[:, :8], bi_b[:, :8])  # bidirectional: queries do see the text
