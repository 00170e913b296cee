"""`molm3d export`: the same model, written again in fp16 under a new id (how models/molm3d-small is made)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from molm3d_core.checkpoints import load_model, save_checkpoint
from molm3d_core.cli.main import main
from molm3d_core.models import MoLM3D, MoLM3DConfig


def test_export_writes_fp16_weights_that_reload_to_the_same_model(tmp_path, capsys):
    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    save_checkpoint(model, tmp_path / "src", model_id="tiny-src", metadata={"stage": 3})
    assert main(["export", "--checkpoint", str(tmp_path / "src"), "-o", str(tmp_path / "out"),
                 "--model-id", "tiny-fp16"]) == 0  # fmt: skip
    assert "float16" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    src_size = (tmp_path / "src" / "model.safetensors").stat().st_size
    assert (tmp_path / "out" / "model.safetensors").stat().st_size < 0.55 * src_size
    exported, info = load_model(tmp_path / "out", device="cpu", dtype="float32")
    assert info.model_id == "tiny-fp16" and info.metadata["stage"] == 3
    original = model.trainable_state_dict()
    for key, value in exported.trainable_state_dict().items():
        torch.testing.assert_close(value, original[key].half().float(), msg=key)
