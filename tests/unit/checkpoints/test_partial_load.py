"""Loading part of a checkpoint: the encoder service holds the molecule side, the LM service the LM."""

from __future__ import annotations

import pytest
import torch

from molm3d_core.checkpoints import load_model, save_checkpoint
from molm3d_core.models import DecodingOptions, MoLM3D, MoLM3DConfig
from molm3d_core.prompts import CAPTION_INSTRUCTION


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    with torch.no_grad():  # move the projector off its seeded init, so that loading it is observable
        model.llm_proj.weight.add_(0.5)
    save_checkpoint(model, folder, model_id="tiny-partial")
    return folder


def test_lm_only_model_decodes_like_the_whole_model(checkpoint):
    whole, _ = load_model(checkpoint, device="cpu", dtype="float32")
    lm_only, info = load_model(checkpoint, device="cpu", dtype="float32", with_molecule=False)
    assert info.model_id == "tiny-partial"
    assert lm_only.encoder is None and lm_only.qformer is None and lm_only.gtm_head is None
    assert sum(p.numel() for p in lm_only.parameters()) < sum(p.numel() for p in whole.parameters())
    torch.testing.assert_close(lm_only.llm_proj.weight, whole.llm_proj.weight, rtol=0, atol=0)

    torch.manual_seed(0)
    mol = torch.randn(2, whole.num_query_tokens, whole.lm.hidden_size)
    prompts = [whole.prompt(CAPTION_INSTRUCTION, s) for s in ("CCO", "c1ccccc1")]
    decoding = DecodingOptions(num_beams=1, max_new_tokens=12)
    assert [g.text for g in lm_only.lm.generate(prompts, mol, decoding)] == [
        g.text for g in whole.lm.generate(prompts, mol, decoding)
    ]


def test_a_partial_model_is_never_saved_as_a_checkpoint(checkpoint, tmp_path):
    lm_only, _ = load_model(checkpoint, device="cpu", dtype="float32", with_molecule=False)
    with pytest.raises(ValueError, match="with_molecule=False"):
        save_checkpoint(lm_only, tmp_path / "out", model_id="partial")
    assert not (tmp_path / "out" / "model.safetensors").exists()
