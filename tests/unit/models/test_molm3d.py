"""The composite model: retrieval embeddings, config round trip, checkpoint round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from molm3d_core.checkpoints import load_model, save_checkpoint
from molm3d_core.models import MoLM3D, MoLM3DConfig
from tests.helpers import molecule_batch

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccncc1"]


def test_molecule_and_text_embeddings(tiny_model):
    with torch.no_grad():
        mol = tiny_model.embed_molecules(molecule_batch(SMILES))
        text = tiny_model.embed_texts(["aspirin is an acetylated salicylate", "ethanol", "pyridine is a base"])
    q, e = tiny_model.num_query_tokens, tiny_model.config.embed_dim
    assert mol.shape == (3, q, e) and text.shape == (3, e)
    torch.testing.assert_close(mol.norm(dim=-1), torch.ones(3, q))
    sim = MoLM3D.similarity(mol, text)
    brute = torch.tensor([[max(float(mol[i, k] @ text[j]) for k in range(q)) for j in range(3)] for i in range(3)])
    torch.testing.assert_close(sim, brute)


def test_one_encode_pass_gives_the_tokens_and_the_embeddings(tiny_model):
    batch = molecule_batch(SMILES)
    with torch.no_grad():
        tokens, embeddings = tiny_model.encode_molecules(batch)  # what the encoder stage serves
        torch.testing.assert_close(tokens, tiny_model.molecule_tokens(batch))
        torch.testing.assert_close(embeddings, tiny_model.embed_molecules(batch))


def test_matching_head_scores_each_pair(tiny_model):
    with torch.no_grad():
        logits = tiny_model.match_logits(molecule_batch(SMILES[:2]), ["aspirin", "ethanol"])
    assert logits.shape == (2,) and torch.isfinite(logits).all()


def test_config_round_trip():
    for preset in ("tiny", "small"):
        cfg = MoLM3DConfig.preset_config(preset)
        assert MoLM3DConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        MoLM3DConfig.preset_config("huge")


def test_checkpoint_round_trip_keeps_everything_but_the_base_lm(tmp_path):
    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    with torch.no_grad():  # make every trained part non-default so a lost tensor would show
        for name, p in model.named_parameters():
            if p.requires_grad or "lora_" in name:
                p.add_(torch.randn_like(p) * 0.01)
        model.lm.model.get_input_embeddings().weight[model.lm.base_vocab_size :] += 0.5
    save_checkpoint(model, tmp_path / "ckpt", model_id="tiny-test")
    loaded, info = load_model(tmp_path / "ckpt", device="cpu", dtype="float32")
    assert info.model_id == "tiny-test" and info.trained

    batch = molecule_batch(SMILES)
    with torch.no_grad():
        torch.testing.assert_close(loaded.molecule_tokens(batch), model.molecule_tokens(batch))
        torch.testing.assert_close(loaded.embed_texts(["benzene"]), model.embed_texts(["benzene"]))
    new_rows = loaded.lm.model.get_input_embeddings().weight[loaded.lm.base_vocab_size :]
    torch.testing.assert_close(new_rows, model.lm.model.get_input_embeddings().weight[model.lm.base_vocab_size :])
    lora = {n: p for n, p in loaded.lm.named_parameters() if "lora_B" in n}
    assert lora and all(torch.equal(p, dict(model.lm.named_parameters())[n]) for n, p in lora.items())

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        lm_keys = [k for k in f.keys() if k.startswith("lm.")]  # noqa: SIM118 (safe_open is not a dict)
    assert lm_keys and all(k.startswith(("lm.lora.", "lm.new_token_embeddings")) for k in lm_keys)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["config"]["lm"]["base"] == "packaged:smollm2-135m-instruct"


def test_load_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a molm3d checkpoint"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        load_model(tmp_path, device="cpu")


def test_explicit_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error path does not apply")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model(None, device="cuda")


def test_property_heads_answer_physically_non_negative_targets_at_zero_or_above():
    from molm3d_core.models.heads import PropertyHead, PropertyHeadConfig

    head = PropertyHead(PropertyHeadConfig(targets=("homo", "tpsa", "rot_a")), input_dim=8)
    values = torch.tensor([[-7.0, 0.0, 2.0], [-5.0, 40.0, 30.0]], dtype=torch.float64)
    head.set_statistics(values, torch.ones_like(values, dtype=torch.bool))
    z = torch.full((1, 3), -50.0)  # far below every mean
    homo, tpsa, rot_a = head.to_units(z)[0].tolist()
    assert homo < -7.0  # an orbital energy may be anything
    assert tpsa == 0.0 and rot_a == 0.0  # an area and a rotational constant may not be negative
    back = head.to_units(head.standardise(values))  # and in range, units round-trip
    assert torch.allclose(back, values, atol=1e-5)
