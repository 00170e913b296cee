"""The training objectives do what Uni-Mol and BLIP-2 do: one test per defect the model issue found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from molm3d_core.chem import CLS, MASK, PAD, SEP, UNK
from molm3d_core.models import MoLM3D, MoLM3DConfig
from molm3d_core.models.encoder3d import norm_deviation
from molm3d_core.training import TrainConfig, TrainingData, build_objective, train_stage
from molm3d_core.training import loop as loop_module
from molm3d_core.training.loop import _lr_at, decayed_parameters, train_mode
from molm3d_core.training.objectives import (
    DIST_MEAN,
    DIST_STD,
    caption_template,
    effective_rank,
    hard_negatives,
    mask_atoms,
)
from tests.helpers import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def tiny():
    return MoLM3D(MoLM3DConfig.preset_config("tiny"))


def _cfg(dataset, out=".", **kw) -> TrainConfig:
    return TrainConfig.preset_config("tiny").replace(data_dir=str(dataset), output_dir=str(out), **kw)


# 1. stage 0 regresses normalised distances ----------------------------------------------------------


class _Fixed(torch.nn.Module):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.output


def test_the_distance_head_is_trained_on_uni_mol_normalised_distances(dataset, tiny):
    objective = build_objective(0, tiny, _cfg(dataset, denoise_fraction=1.0), TrainingData.load(dataset))
    batch = objective.batch(step=0, micro=0)
    assert batch["selected"].any()
    target = batch["target_dist"]
    # A distance head that outputs exactly the normalised distances has (almost) no loss ...
    objective.heads.dist_head = _Fixed(((target - DIST_MEAN) / DIST_STD).unsqueeze(-1))
    _, parts = objective.loss(batch)
    assert parts["dist"] < 1e-6
    # ... and one that outputs raw angstroms does.
    objective.heads.dist_head = _Fixed(target.unsqueeze(-1))
    _, parts = objective.loss(batch)
    assert parts["dist"] > 0.5


# 2. Uni-Mol's norm regularisers, masking, weight decay, warm-up --------------------------------------


def test_norm_deviation_is_zero_at_the_layernorm_norm_and_grows_beyond_the_tolerance():
    d = 16
    at_norm = torch.full((2, 3, d), 1.0)  # ||x|| = sqrt(d)
    assert float(norm_deviation(at_norm, torch.ones(2, 3, dtype=torch.bool))) == 0.0
    triple = at_norm * 3  # ||x|| = 3 sqrt(d): deviation 2 sqrt(d) - 1
    assert float(norm_deviation(triple, torch.ones(2, 3, dtype=torch.bool))) == pytest.approx(2 * math.sqrt(d) - 1)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    mixed = torch.cat([at_norm[:, :1], triple[:, 1:]], dim=1)
    assert float(norm_deviation(mixed, mask)) == 0.0  # masked-out positions do not count


def test_stage_0_adds_both_norm_regularisers_to_the_denoising_loss(dataset, tiny):
    objective = build_objective(0, tiny, _cfg(dataset, denoise_fraction=1.0), TrainingData.load(dataset))
    batch = objective.batch(step=0, micro=0)
    _, parts = objective.loss(batch)
    assert {"x_norm", "delta_norm", "token", "coord", "dist", "property"} <= set(parts)
    # The regularisers reach the loss: scaling the atom states' norm up raises x_norm's share.
    with torch.no_grad():
        tiny.encoder.encoder.layers[-1].fc2.bias.add_(10.0)
    _, scaled = objective.loss(batch)
    assert scaled["x_norm"] > parts["x_norm"] + 1.0


def _tokens(n_molecules: int, n_atoms: int) -> torch.Tensor:
    row = [CLS] + [4 + (i % 5) for i in range(n_atoms)] + [SEP, PAD, PAD]
    return torch.tensor([row] * n_molecules)


def test_masking_selects_15_percent_and_masks_80_keeps_10_randomises_10():
    tokens = _tokens(4000, 20)
    corrupted, selected, noised = mask_atoms(tokens, np.random.default_rng(0), 0.15)
    specials = (tokens == CLS) | (tokens == SEP) | (tokens == PAD)
    assert not (selected & specials).any()
    assert float(selected.sum()) / float((~specials).sum()) == pytest.approx(0.15, abs=0.01)
    sel = selected
    masked = (corrupted == MASK) & sel
    kept = (corrupted == tokens) & sel
    randomised = sel & ~masked & ~kept
    n = float(sel.sum())
    assert float(masked.sum()) / n == pytest.approx(0.8, abs=0.02)
    # a random type can equal the original (1 in 26): "kept" is slightly above 10 %
    assert float(kept.sum()) / n == pytest.approx(0.1 + 0.1 / 26, abs=0.02)
    assert float(randomised.sum()) / n == pytest.approx(0.1 - 0.1 / 26, abs=0.02)
    assert (corrupted[randomised] > UNK).all() and (corrupted[randomised] < MASK).all()
    # coordinates are noised where the type was masked or randomised, not where it was kept on purpose
    assert not (noised & ~sel).any() and noised[sel & (corrupted != tokens)].all()
    assert float(noised.sum()) / n == pytest.approx(0.9, abs=0.02)


def test_small_molecules_are_sometimes_left_unmasked_never_forced_at_their_first_atom():
    tokens = _tokens(2000, 2)  # int(0.15 * 2 + U) = 0 with probability 0.7
    _, selected, _ = mask_atoms(tokens, np.random.default_rng(1), 0.15)
    none = float((~selected.any(1)).float().mean())
    assert none == pytest.approx(0.7, abs=0.04)
    first, second = selected[:, 1].float().mean(), selected[:, 2].float().mean()
    assert float(first) == pytest.approx(float(second), abs=0.04)


def test_weight_decay_applies_to_linear_weights_only(tiny):
    decayed = decayed_parameters([tiny])
    named = dict(tiny.named_parameters())
    for name in ("encoder.embed_tokens.weight", "encoder.gbf.mul.weight", "encoder.gbf.bias.weight",
                 "encoder.gbf.means.weight", "qformer.query_tokens", "ln_graph.weight",
                 "encoder.encoder.layers.0.fc1.bias"):  # fmt: skip
        assert id(named[name]) not in decayed, name
    for name in ("encoder.encoder.layers.0.fc1.weight", "encoder.gbf_proj.linear1.weight", "llm_proj.weight",
                 "property_head.dense.weight"):  # fmt: skip
        assert id(named[name]) in decayed, name


def test_warm_up_defaults_to_5_percent_of_the_steps():
    cfg = TrainConfig(steps=2000, lr=1e-3)
    assert cfg.warmup == 100
    assert _lr_at(cfg, 0) == pytest.approx(1e-5)
    assert _lr_at(cfg, 49) == pytest.approx(5e-4)
    assert _lr_at(cfg, 99) == pytest.approx(1e-3)
    assert TrainConfig(steps=2000, warmup_steps=10).warmup == 10


# 3. frozen modules stay in eval mode -----------------------------------------------------------------


def test_a_frozen_encoder_runs_without_dropout_while_the_q_former_trains(dataset, tmp_path, monkeypatch):
    seen = []
    real_build = loop_module.build_objective

    def build(stage, model, cfg, data):
        objective = real_build(stage, model, cfg, data)
        real_loss = objective.loss

        def loss(batch):
            feats = batch["features"]
            with torch.no_grad():
                a, b = model.encode(feats)[0], model.encode(feats)[0]
            seen.append((model.encoder.training, model.qformer.training, torch.equal(a, b)))
            return real_loss(batch)

        objective.loss = loss
        return objective

    monkeypatch.setattr(loop_module, "build_objective", build)
    train_stage(1, _cfg(dataset, tmp_path, steps=2), progress=False)
    assert seen == [(False, True, True)] * 2


def test_train_mode_leaves_modules_with_trainable_parameters_in_train_mode(tiny):
    trainable = {id(p) for n, p in tiny.named_parameters() if n.startswith(("qformer.", "llm_proj."))}
    train_mode(tiny, trainable)
    assert tiny.qformer.training and tiny.llm_proj.training
    assert not tiny.encoder.training and not tiny.ln_graph.training and not tiny.property_head.training


# 4. stage 1: hard negatives per text, no template twins in a batch, one text length ----------------


def test_hard_negative_molecules_are_drawn_from_each_texts_own_distribution():
    # Text 0's best wrong molecule is molecule 1 (10 vs -10). Normalised per molecule instead, molecule
    # 1's row is dominated by its similarity to text 2 and would almost never be drawn for text 0.
    sim = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 20.0], [-10.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = [int(hard_negatives(sim, generator)[1][0]) for _ in range(300)]
    assert draws.count(1) >= 297
    neg_text = [int(hard_negatives(sim, generator)[0][1]) for _ in range(300)]
    assert neg_text.count(2) >= 297  # molecule 1's best wrong text is text 2 (20 vs 10)


def test_stage_1_batches_never_hold_two_captions_of_one_template(tiny, dataset):
    molecules = TrainingData.load(dataset).molecules
    ids = sorted(molecules)
    names = ["propanol", "butanol", "pentanol", "hexanol", "benzene", "pyridine"]
    data = TrainingData({m: {**molecules[m], "name": n} for m, n in zip(ids, names, strict=True)}, [])
    alcohols = {m for m, n in zip(ids, names, strict=True) if n.endswith("ol")}
    for m, n in zip(ids, names, strict=True):
        text = f"{n} is a primary alcohol." if m in alcohols else f"{n} is an aromatic compound."
        data.examples.append({"mol_id": m, "task": "caption", "answer": text})
    objective = build_objective(1, tiny, _cfg(dataset, batch_size=4, property_batch_size=0), data)
    for step in range(30):
        texts = objective.batch(step, 0)["texts"]
        assert sum(t.endswith("primary alcohol.") for t in texts) <= 1, texts
        assert sum(t.endswith("aromatic compound.") for t in texts) <= 1, texts
    assert caption_template("hexanol is a primary alcohol.", "hexanol") == caption_template(
        "butanol is a primary alcohol.", "butanol"
    )


def test_texts_are_cut_at_one_length_in_training_and_in_retrieval(tiny, dataset):
    long_text = "a molecule " * 200
    lengths = []
    hook = tiny.qformer.register_forward_hook(
        lambda mod, args, kwargs, out: lengths.append(out.shape[1]) if out is not None else None, with_kwargs=True
    )
    tiny.embed_texts([long_text])
    data = TrainingData.load(dataset)
    data.examples = [{**e, "answer": long_text} if e["task"] == "caption" else e for e in data.examples]
    objective = build_objective(1, tiny, _cfg(dataset, property_batch_size=0), data)
    lengths_before = len(lengths)
    objective.loss(objective.batch(0, 0))
    hook.remove()
    limit = tiny.config.max_text_tokens
    assert lengths[0] == limit  # texts only, no queries
    assert max(lengths[lengths_before:]) == tiny.num_query_tokens + limit


# 5. representation health -----------------------------------------------------------------------------


def test_effective_rank_counts_the_directions_molecules_spread_over():
    torch.manual_seed(0)
    line = torch.randn(1, 32) * torch.arange(16.0).unsqueeze(1)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    spread = torch.randn(64, 32)
    assert effective_rank(spread) > 20
    assert effective_rank(torch.ones(8, 32)) == 0.0
