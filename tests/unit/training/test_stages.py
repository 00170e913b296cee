"""Every stage trains (loss falls on a memorisable set), resumes exactly, and the official preset runs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from molm3d_core.checkpoints import load_model, save_checkpoint
from molm3d_core.models import MoLM3D, MoLM3DConfig, QFormerConfig, UniMolConfig
from molm3d_core.training import TrainConfig, train_stage
from molm3d_core.training import loop as loop_module
from tests.helpers import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


def _cfg(dataset, out, **kw) -> TrainConfig:
    return TrainConfig.preset_config("tiny").replace(data_dir=str(dataset), output_dir=str(out), **kw)


def _metrics(out, stage: int) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()]
    return {k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in rows[0]}


def _ends(values: np.ndarray) -> tuple[float, float]:
    return float(np.nanmean(values[:5])), float(np.nanmean(values[-5:]))


@pytest.mark.parametrize(("stage", "steps", "lr"), [(2, 40, 2e-2), (3, 40, 2e-2)])
def test_stage_loss_falls_on_a_memorisable_set(dataset, tmp_path, stage, steps, lr):
    cfg = _cfg(dataset, tmp_path, steps=steps, lr=lr, save_every=1000)
    result = train_stage(stage, cfg, progress=False)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.7 * first, (stage, result.losses)
    assert (tmp_path / f"stage{stage}" / "final" / "model.safetensors").exists()
    lines = (tmp_path / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == steps  # tiny preset logs every step


def test_stage0_learns_every_loss_part_without_collapsing_the_molecules(dataset, tmp_path):
    """Each part falls on its own (a total can fall while one part collapses or stays at its prior),
    and the molecules' [CLS] states stay as spread out as at the start."""
    cfg = _cfg(dataset, tmp_path, steps=60, lr=2e-3, save_every=1000, denoise_fraction=0.5, denoise_weight=1.0)
    train_stage(0, cfg, progress=False)
    m = _metrics(tmp_path, 0)
    for part, ratio in (("property", 0.7), ("token", 0.6), ("coord", 0.6), ("dist", 0.5)):
        first, last = _ends(m[part])
        assert last < ratio * first, (part, first, last)
    for health in ("cls_spread", "cls_rank"):
        first, last = _ends(m[health])
        assert last > 0.5 * first, (health, first, last)


def test_stage1_learns_contrast_matching_captions_and_properties(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path, steps=250, lr=1e-2, save_every=1000, log_every=5)
    train_stage(1, cfg, progress=False)
    m = _metrics(tmp_path, 1)
    itc_first, itc_last = _ends(m["itc"])
    assert itc_last < 0.5 * np.log(cfg.batch_size) < itc_first  # from chance to well below it
    assert _ends(m["itm"])[1] < 0.5  # well below the 0.637 that the 1:2 positive:negative prior gives
    lm_first, lm_last = _ends(m["lm"])
    assert lm_last < 0.3 * lm_first
    prop_first, prop_last = _ends(m["property"])
    assert prop_last < 0.7 * prop_first
    spread_first, spread_last = _ends(m["query_spread"])
    assert spread_last > spread_first  # the queries come to tell the molecules apart


def test_next_stage_starts_from_the_previous_final(dataset, tmp_path):
    train_stage(1, _cfg(dataset, tmp_path, steps=2), progress=False)
    stage1 = load_file(str(tmp_path / "stage1" / "final" / "model.safetensors"))
    model, info = load_model(tmp_path / "stage1" / "final", device="cpu")
    assert info.model_id == "molm3d-tiny-stage1"
    torch.testing.assert_close(model.qformer.query_tokens.detach(), stage1["qformer.query_tokens"])
    result = train_stage(2, _cfg(dataset, tmp_path, steps=1), progress=False)
    assert result.steps == 1


def test_resume_continues_from_the_saved_step(dataset, tmp_path, monkeypatch):
    straight = train_stage(2, _cfg(dataset, tmp_path / "a", steps=6, save_every=3), progress=False)

    real_build = loop_module.build_objective

    def interrupted(*args, **kwargs):
        objective = real_build(*args, **kwargs)
        real_batch = objective.batch

        def batch(step, micro):
            if step == 4:
                raise KeyboardInterrupt  # the session ends mid-run
            return real_batch(step, micro)

        objective.batch = batch
        return objective

    monkeypatch.setattr(loop_module, "build_objective", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_stage(2, _cfg(dataset, tmp_path / "b", steps=6, save_every=3), progress=False)
    monkeypatch.setattr(loop_module, "build_objective", real_build)
    resumed = train_stage(2, _cfg(dataset, tmp_path / "b", steps=6, save_every=3), progress=False)
    assert len(resumed.losses) == 3  # steps 3, 4, 5 only
    np.testing.assert_allclose(resumed.losses, straight.losses[3:], rtol=1e-4)
    a = load_file(str(tmp_path / "a" / "stage2" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "stage2" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def _nan_loss_at(steps: set[int] | None, monkeypatch) -> None:
    """Make the objective's loss NaN at these steps (None: always), as a numerics bug would.
    The tiny preset has one micro-batch per step, so the n-th loss call is step n."""
    real_build = loop_module.build_objective

    def build(*args, **kwargs):
        objective = real_build(*args, **kwargs)
        real_loss, calls = objective.loss, itertools.count()

        def loss(b):
            value, parts = real_loss(b)
            step = next(calls)
            return (value * float("nan"), parts) if steps is None or step in steps else (value, parts)

        objective.loss = loss
        return objective

    monkeypatch.setattr(loop_module, "build_objective", build)


def test_a_non_finite_step_is_skipped_and_the_weights_stay_finite(dataset, tmp_path, monkeypatch):
    _nan_loss_at({1}, monkeypatch)
    cfg = _cfg(dataset, tmp_path, steps=4, save_every=1000)
    result = train_stage(2, cfg, progress=False)
    assert np.isnan(result.losses[1]) and np.isfinite([result.losses[i] for i in (0, 2, 3)]).all()
    weights = load_file(str(result.final_checkpoint / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    last = (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"skipped_steps": 1' in last


def test_persistent_non_finite_losses_stop_the_stage_with_a_clear_error(dataset, tmp_path, monkeypatch):
    _nan_loss_at(None, monkeypatch)
    with pytest.raises(FloatingPointError, match="5 consecutive steps"):
        train_stage(2, _cfg(dataset, tmp_path, steps=8, save_every=1000), progress=False)


def test_official_preset_runs_a_step_at_reduced_size(dataset, tmp_path):
    """Paper architecture (Uni-Mol 512 wide x 64 heads, BERT-base-wide Q-Former, Llama) with fewer layers."""
    cfg = MoLM3DConfig.preset_config(
        "official",
        random_init={"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64},
    )  # fmt: skip
    cfg.encoder = UniMolConfig(num_layers=2)
    cfg.qformer = QFormerConfig(num_layers=2)
    assert (cfg.encoder.embed_dim, cfg.encoder.num_heads, cfg.qformer.hidden_size) == (512, 64, 768)
    assert cfg.prompt_template == "reference" and cfg.lm.lora_dropout == 0.1
    save_checkpoint(MoLM3D(cfg), tmp_path / "init", model_id="official-reduced")
    train_cfg = TrainConfig.preset_config("official").replace(
        data_dir=str(dataset), output_dir=str(tmp_path / "run"), init_checkpoint=str(tmp_path / "init"),
        steps=1, batch_size=2, grad_accum=1, warmup_steps=0,
    )  # fmt: skip
    result = train_stage(3, train_cfg, progress=False)
    assert result.steps == 1 and np.isfinite(result.losses[0])


def test_smiles_only_baseline_trains_lora_without_molecule_tokens(dataset, tmp_path):
    result = train_stage(3, _cfg(dataset, tmp_path, steps=2, molecule_tokens=False), progress=False)
    model, _ = load_model(result.final_checkpoint, device="cpu")
    assert model.config.molecule_tokens is False
    assert "<mol>" not in model.prompt("What is it?", "CCO")


def test_unknown_config_keys_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text('preset = "tiny"\nstepz = 3\n')
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.load(str(tmp_path / "bad.toml"))
    (tmp_path / "ok.toml").write_text('preset = "tiny"\nsteps = 3\ntasks = ["mw"]\n')
    cfg = TrainConfig.load(str(tmp_path / "ok.toml"))
    assert cfg.steps == 3 and cfg.tasks == ("mw",) and cfg.preset == "tiny"


@pytest.mark.parametrize("stage", [1, 3])
def test_final_checkpoint_holds_everything_that_trained(dataset, tmp_path, stage):
    """Reloading `final` gives the trained weights back: the LM trains LoRA only (its base is referenced,
    not saved)."""
    cfg = _cfg(dataset, tmp_path, steps=3, lr=1e-2, save_every=1000)
    result = train_stage(stage, cfg, progress=False)
    trained = load_file(str(tmp_path / f"stage{stage}" / "last" / "weights.safetensors"))  # every trained tensor
    assert not [n for n in trained if n.startswith("lm.") and "lora_" not in n]
    model, _ = load_model(result.final_checkpoint, device="cpu", dtype="float32")
    own = dict(model.named_parameters())
    for name, value in trained.items():
        if not name.startswith("pretrain_heads."):
            torch.testing.assert_close(own[name].detach(), value, msg=name)


def test_small_checkpoints_reference_the_bert_vocabulary(tmp_path):
    """The small preset's checkpoint stores the [DEC] row, not MiniLM's 30,522 rows (the 60 MB budget)."""
    from molm3d_core.models.molm3d import NEW_TEXT_ROWS, WORD_EMBEDDINGS

    model = MoLM3D(MoLM3DConfig.preset_config("small"))
    state = model.trainable_state_dict()
    assert WORD_EMBEDDINGS not in state and state[NEW_TEXT_ROWS].shape == (1, 384)
    with torch.no_grad():
        model.qformer.bert.embeddings.word_embeddings.weight[-1] += 1.0  # a trained [DEC] row
    save_checkpoint(model, tmp_path / "ck", model_id="small-test")
    loaded, _ = load_model(tmp_path / "ck", device="cpu", dtype="float32")
    torch.testing.assert_close(
        loaded.qformer.bert.embeddings.word_embeddings.weight, model.qformer.bert.embeddings.word_embeddings.weight
    )


def test_stage1_keeps_the_bert_vocabulary_rows_frozen(dataset):
    """Only added rows ([DEC]) of the Q-Former's word embeddings get gradients in stage 1."""
    from molm3d_core.training.data import TrainingData
    from molm3d_core.training.objectives import QFormerPretraining

    model = MoLM3D(MoLM3DConfig.preset_config("small"), with_lm=False)
    objective = QFormerPretraining(model, TrainConfig(), TrainingData.load(dataset))
    names = [n for n, _ in objective.trainable()]
    words = model.qformer.bert.embeddings.word_embeddings
    assert "qformer.bert.embeddings.word_embeddings.weight" in names
    rows = model.pretrained_text_rows
    words(torch.tensor([5, 100, rows])).sum().backward()
    assert words.weight.grad[:rows].abs().sum() == 0 and words.weight.grad[rows].abs().sum() > 0
