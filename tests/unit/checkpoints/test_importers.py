"""Importers of the official weights: every official key is mapped (with the right shape) or skipped with a reason.

The official layouts below are written out by hand from the official architectures (Uni-Core's Uni-Mol,
LAVIS's BLIP-2 Q-Former as 3D-MoLM wraps it in `blip2qformer` / `blip2opt`, peft's LoRA names on
Llama-2-7B), never read from our model's state_dict, so a naming or shape drift on our side shows up
here. Each entry is `official key -> (shape, our key)`; our key None means "must be reported as
skipped". Full-size layouts are checked against the official architecture on the meta device (no
memory); values are checked on a real model with the official Uni-Mol and a tiny Q-Former and LM.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from molm3d_core.checkpoints.importers import import_official, map_molm_key
from molm3d_core.chem import collate, featurize_atoms
from molm3d_core.models import MoLM3D, MoLM3DConfig, UniMolConfig

# Loading into the meta-device model copies nothing (by design); torch warns once per tensor.
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

Layout = dict[str, tuple[tuple[int, ...], str | None]]


@dataclasses.dataclass(frozen=True)
class Dims:
    """Official numbers: Uni-Mol 15 x 512 (64 heads, 128 kernels, 31 atom types), SciBERT Q-Former
    (31,090 + [DEC], 768, 12 layers, FFN 3072, cross-attention every 2nd layer, 8 queries, retrieval
    projection 256), Llama-2-7B (4096, FFN 11008, 32 layers, MHA) with LoRA r=8."""

    atom_types: int = 31
    unimol_dim: int = 512
    unimol_ffn: int = 2048
    unimol_heads: int = 64
    unimol_layers: int = 15
    kernels: int = 128
    vocab: int = 31_091
    hq: int = 768
    q_layers: int = 12
    q_ffn: int = 3072
    max_positions: int = 512
    queries: int = 8
    proj: int = 256
    lm_hidden: int = 4096
    lm_ffn: int = 11_008
    lm_layers: int = 32
    lm_q_out: int = 4096  # heads x head_dim
    lm_kv_out: int = 4096  # kv heads x head_dim
    lora_r: int = 8


OFFICIAL = Dims()
# The real model of the value tests: official Uni-Mol, tiny Q-Former (reading 512-wide atoms), tiny LM.
SMALL = Dims(
    vocab=30_523, hq=32, q_layers=2, q_ffn=64, proj=16, lm_hidden=64, lm_ffn=128, lm_layers=2, lm_q_out=64, lm_kv_out=32
)


def _linear(layout: Layout, off: str, ours: str | None, out: int, in_: int, bias: bool = True) -> None:
    layout[f"{off}.weight"] = ((out, in_), ours and f"{ours}.weight")
    if bias:
        layout[f"{off}.bias"] = ((out,), ours and f"{ours}.bias")


def _norm(layout: Layout, off: str, ours: str | None, n: int) -> None:
    layout[f"{off}.weight"] = ((n,), ours and f"{ours}.weight")
    layout[f"{off}.bias"] = ((n,), ours and f"{ours}.bias")


def unimol_layout(d: Dims = OFFICIAL) -> Layout:
    """`mol_pre_no_h_220816.pt`'s "model": Uni-Core names, kept under our `encoder.` prefix; the
    pretraining heads (masked atoms, coordinates, distances) are skipped."""
    lay: Layout = {}

    def keep(name: str, *dims: int, bias: bool = True, norm: bool = False) -> None:
        if norm:
            _norm(lay, name, f"encoder.{name}", dims[0])
        else:
            _linear(lay, name, f"encoder.{name}", *dims, bias=bias)

    n_edge = d.atom_types * d.atom_types
    lay["embed_tokens.weight"] = ((d.atom_types, d.unimol_dim), "encoder.embed_tokens.weight")
    lay["gbf.means.weight"] = ((1, d.kernels), "encoder.gbf.means.weight")
    lay["gbf.stds.weight"] = ((1, d.kernels), "encoder.gbf.stds.weight")
    lay["gbf.mul.weight"] = ((n_edge, 1), "encoder.gbf.mul.weight")
    lay["gbf.bias.weight"] = ((n_edge, 1), "encoder.gbf.bias.weight")
    keep("gbf_proj.linear1", d.kernels, d.kernels)
    keep("gbf_proj.linear2", d.unimol_heads, d.kernels)
    keep("encoder.emb_layer_norm", d.unimol_dim, norm=True)
    keep("encoder.final_layer_norm", d.unimol_dim, norm=True)
    keep("encoder.final_head_layer_norm", d.unimol_heads, norm=True)
    for i in range(d.unimol_layers):
        p = f"encoder.layers.{i}."
        keep(p + "self_attn.in_proj", 3 * d.unimol_dim, d.unimol_dim)
        keep(p + "self_attn.out_proj", d.unimol_dim, d.unimol_dim)
        keep(p + "self_attn_layer_norm", d.unimol_dim, norm=True)
        keep(p + "fc1", d.unimol_ffn, d.unimol_dim)
        keep(p + "fc2", d.unimol_dim, d.unimol_ffn)
        keep(p + "final_layer_norm", d.unimol_dim, norm=True)
    # pretraining heads
    _linear(lay, "lm_head.dense", None, d.unimol_dim, d.unimol_dim)
    _norm(lay, "lm_head.layer_norm", None, d.unimol_dim)
    lay["lm_head.weight"] = ((d.atom_types, d.unimol_dim), None)
    lay["lm_head.bias"] = ((d.atom_types,), None)
    _linear(lay, "pair2coord_proj.linear1", None, d.unimol_heads, d.unimol_heads)
    _linear(lay, "pair2coord_proj.linear2", None, 1, d.unimol_heads)
    _linear(lay, "dist_head.dense", None, d.unimol_heads, d.unimol_heads)
    _norm(lay, "dist_head.layer_norm", None, d.unimol_heads)
    _linear(lay, "dist_head.out_proj", None, 1, d.unimol_heads)
    return lay


def _qformer_layers(lay: Layout, off: str, d: Dims, text_ffn: bool) -> None:
    """BLIP-2 Q-Former layers; our Q-Former keeps the names below `Qformer.` under `qformer.`."""

    def keep(name: str, *dims: int, norm: bool = False) -> None:
        if norm:
            _norm(lay, off + name, f"qformer.{name}", dims[0])
        else:
            _linear(lay, off + name, f"qformer.{name}", *dims)

    for i in range(d.q_layers):
        p = f"bert.encoder.layer.{i}."
        for m in ("query", "key", "value"):
            keep(p + f"attention.self.{m}", d.hq, d.hq)
        keep(p + "attention.output.dense", d.hq, d.hq)
        keep(p + "attention.output.LayerNorm", d.hq, norm=True)
        if i % 2 == 0:  # cross-attention to the 512-wide atom states every second layer
            keep(p + "crossattention.self.query", d.hq, d.hq)
            keep(p + "crossattention.self.key", d.hq, d.unimol_dim)
            keep(p + "crossattention.self.value", d.hq, d.unimol_dim)
            keep(p + "crossattention.output.dense", d.hq, d.hq)
            keep(p + "crossattention.output.LayerNorm", d.hq, norm=True)
        for suffix in ("_query", "") if text_ffn else ("_query",):
            keep(p + f"intermediate{suffix}.dense", d.q_ffn, d.hq)
            keep(p + f"output{suffix}.dense", d.hq, d.q_ffn)
            keep(p + f"output{suffix}.LayerNorm", d.hq, norm=True)


def stage1_layout(d: Dims = OFFICIAL) -> Layout:
    """3D-MoLM stage-1 checkpoint ("state_dict" of the Lightning module wrapping `blip2qformer`)."""
    lay: Layout = {}
    q = "blip2qformer.Qformer."
    lay[q + "bert.embeddings.word_embeddings.weight"] = (
        (d.vocab, d.hq),
        "qformer.bert.embeddings.word_embeddings.weight",
    )
    lay[q + "bert.embeddings.position_embeddings.weight"] = (
        (d.max_positions, d.hq),
        "qformer.bert.embeddings.position_embeddings.weight",
    )
    lay[q + "bert.embeddings.position_ids"] = ((1, d.max_positions), None)  # buffer
    _norm(lay, q + "bert.embeddings.LayerNorm", "qformer.bert.embeddings.LayerNorm", d.hq)
    _qformer_layers(lay, q, d, text_ffn=True)
    _linear(lay, q + "cls.predictions.transform.dense", "qformer.cls.predictions.transform.dense", d.hq, d.hq)
    _norm(lay, q + "cls.predictions.transform.LayerNorm", "qformer.cls.predictions.transform.LayerNorm", d.hq)
    lay[q + "cls.predictions.bias"] = ((d.vocab,), "qformer.cls.predictions.bias")
    lay[q + "cls.predictions.decoder.weight"] = ((d.vocab, d.hq), None)  # tied to word_embeddings
    lay[q + "cls.predictions.decoder.bias"] = ((d.vocab,), None)  # the same Parameter as predictions.bias
    lay["blip2qformer.query_tokens"] = ((1, d.queries, d.hq), "qformer.query_tokens")
    _norm(lay, "blip2qformer.ln_graph", "ln_graph", d.unimol_dim)
    _linear(lay, "blip2qformer.graph_proj", "graph_proj", d.proj, d.hq)
    _linear(lay, "blip2qformer.text_proj", "text_proj", d.proj, d.hq)
    _linear(lay, "blip2qformer.gtm_head", "gtm_head", 2, d.hq)
    lay["blip2qformer.temp"] = ((), None)
    return lay


LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
LORA_MODULES += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def stage2_layout(d: Dims = OFFICIAL) -> Layout:
    """3D-MoLM stage-2/3 checkpoint (`blip2opt`): the Q-Former without its text branch, ln_graph,
    llm_proj and peft LoRA weights of the LM (only trainable weights are saved)."""
    lay: Layout = {}
    _norm(lay, "blip2opt.Qformer.bert.embeddings.LayerNorm", "qformer.bert.embeddings.LayerNorm", d.hq)
    _qformer_layers(lay, "blip2opt.Qformer.", d, text_ffn=False)
    lay["blip2opt.query_tokens"] = ((1, d.queries, d.hq), "qformer.query_tokens")
    _norm(lay, "blip2opt.ln_graph", "ln_graph", d.unimol_dim)
    _linear(lay, "blip2opt.llm_proj", "llm_proj", d.lm_hidden, d.hq)
    fans = {  # (in, out) of each adapted projection
        "self_attn.q_proj": (d.lm_hidden, d.lm_q_out),
        "self_attn.k_proj": (d.lm_hidden, d.lm_kv_out),
        "self_attn.v_proj": (d.lm_hidden, d.lm_kv_out),
        "self_attn.o_proj": (d.lm_q_out, d.lm_hidden),
        "mlp.gate_proj": (d.lm_hidden, d.lm_ffn),
        "mlp.up_proj": (d.lm_hidden, d.lm_ffn),
        "mlp.down_proj": (d.lm_ffn, d.lm_hidden),
    }
    for i in range(d.lm_layers):
        for module in LORA_MODULES:
            fan_in, fan_out = fans[module]
            for ab, shape in (("A", (d.lora_r, fan_in)), ("B", (fan_out, d.lora_r))):
                name = f"base_model.model.model.layers.{i}.{module}.lora_{ab}.default.weight"
                lay[f"blip2opt.llm_model.{name}"] = (shape, f"lm.model.{name}")
    return lay


# files -------------------------------------------------------------------------------------------


def _placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of the right shape stored as one element (a stride-0 view): full-size files stay tiny."""
    return torch.zeros((), dtype=dtype).expand(shape)


def _shapes_file(path: Path, layout: Layout, key: str, dtype: torch.dtype = torch.bfloat16) -> Path:
    torch.save({key: {k: _placeholder(shape, dtype) for k, (shape, _) in layout.items()}}, path)
    return path


def _random_state(layout: Layout, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (0.05 * torch.randn(shape, generator=gen)).to(dtype) for k, (shape, _) in layout.items()}


def _expected_mapping(layout: Layout) -> dict[str, str]:
    return {k: ours for k, (_, ours) in layout.items() if ours is not None}


def _must_skip(layout: Layout) -> set[str]:
    return {k for k, (_, ours) in layout.items() if ours is None}


# models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_meta():
    """The official architecture (Uni-Mol, SciBERT-size Q-Former, Llama-2-7B dims) on the meta device."""
    llama7b = {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 128,
        "vocab_size": 32000,
    }
    model = MoLM3D(MoLM3DConfig.preset_config("official", random_init=llama7b), meta=True)
    return model, {k: v.shape for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small_real():
    """A real model: the official Uni-Mol encoder, a tiny Q-Former reading its 512-wide states, a tiny LM."""
    tiny = MoLM3DConfig.preset_config("tiny")
    qformer = dataclasses.replace(tiny.qformer, encoder_width=512, bert_path=None)
    config = dataclasses.replace(tiny, encoder=UniMolConfig.official(), qformer=qformer)
    return MoLM3D(config).eval()


def _molecule() -> dict[str, torch.Tensor]:
    coords = np.array([[0.0, 0.0, 0.0], [1.5, 0.1, 0.0], [2.1, 1.2, 0.3], [-0.7, 1.2, -0.2]], dtype=np.float32)
    return collate([featurize_atoms(["C", "C", "O", "N"], coords)])


# 1-3. every official key mapped with its shape, or skipped with a reason ----------------------------


def test_small_layout_matches_the_small_model_config(small_real):
    # The value tests below build their files from SMALL: keep it honest about the model it targets.
    c = small_real.config
    assert (c.qformer.vocab_size, c.qformer.hidden_size, c.qformer.num_layers) == (
        SMALL.vocab,
        SMALL.hq,
        SMALL.q_layers,
    )
    assert (c.qformer.intermediate_size, c.embed_dim, c.encoder) == (SMALL.q_ffn, SMALL.proj, UniMolConfig.official())
    lm = c.lm.random_init
    assert (lm["hidden_size"], lm["intermediate_size"], lm["num_hidden_layers"]) == (64, 128, 2)
    assert lm["num_attention_heads"] * lm["head_dim"] == SMALL.lm_q_out
    assert lm["num_key_value_heads"] * lm["head_dim"] == SMALL.lm_kv_out


def test_unimol_every_key_mapped_or_skipped(official_meta, tmp_path):
    model, own = official_meta
    layout = unimol_layout()
    assert len(layout) == 5 + 4 + 6 + 15 * 12 + 16  # embed + gbf, gbf_proj, 3 norms, 15 layers; 16 head tensors
    report = import_official(model, unimol=_shapes_file(tmp_path / "unimol.pt", layout, "model", torch.float32))

    assert report.mapped == _expected_mapping(layout)
    assert set(report.skipped) == _must_skip(layout)
    assert all("pretraining head" in reason for reason in report.skipped.values())
    for key, (shape, ours) in layout.items():
        if ours is not None:
            assert own[ours] == torch.Size(shape), key
    # ...and the file covers the whole encoder: nothing left at its random init.
    assert {k for k in own if k.startswith("encoder.")} == set(report.mapped.values())


def test_stage1_every_key_mapped_or_skipped(official_meta, tmp_path):
    model, own = official_meta
    layout = stage1_layout()
    report = import_official(model, checkpoints=[_shapes_file(tmp_path / "stage1.ckpt", layout, "state_dict")])

    assert report.mapped == _expected_mapping(layout)
    assert report.skipped.keys() == {
        "blip2qformer.Qformer.bert.embeddings.position_ids",
        "blip2qformer.Qformer.cls.predictions.decoder.weight",
        "blip2qformer.Qformer.cls.predictions.decoder.bias",
        "blip2qformer.temp",
    }
    assert all(report.skipped.values())
    for key, (shape, ours) in layout.items():
        if ours is not None:
            assert own[ours] == torch.Size(shape), key
    # Stage 1 fills the whole Q-Former and the retrieval heads.
    stage1_parts = ("qformer.", "ln_graph.", "graph_proj.", "text_proj.", "gtm_head.")
    assert {k for k in own if k.startswith(stage1_parts)} == set(report.mapped.values())


def test_stage2_every_key_mapped_including_all_lora(official_meta, tmp_path):
    model, own = official_meta
    layout = stage2_layout()
    report = import_official(model, checkpoints=[_shapes_file(tmp_path / "stage2.ckpt", layout, "state_dict")])

    assert report.mapped == _expected_mapping(layout)
    assert report.skipped == {}
    lora = {ours for ours in report.mapped.values() if ".lora_" in ours}
    assert len(lora) == 32 * 7 * 2
    assert report.mapped["blip2opt.llm_proj.weight"] == "llm_proj.weight"
    assert report.mapped["blip2opt.query_tokens"] == "qformer.query_tokens"
    for key, (shape, ours) in layout.items():
        assert own[ours] == torch.Size(shape), key
    # Every LoRA weight of our LM comes from the file, and the generation path is complete: the only
    # Q-Former weights stage 2 leaves to stage 1 are the text branch and the captioning head.
    assert {k for k in own if ".lora_" in k} == lora
    text_only = re.compile(
        r"qformer\.(cls\.|bert\.embeddings\.(word|position)_|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)"
    )
    left = {k for k in own if k.startswith("qformer.") and k not in report.mapped.values()}
    assert left and all(text_only.match(k) for k in left), sorted(k for k in left if not text_only.match(k))[:5]


# 4. shape mismatches and unknown keys -----------------------------------------------------------


def test_wrong_shape_is_an_error_naming_the_key(official_meta, tmp_path):
    model, _ = official_meta
    layout = stage2_layout()
    layout["blip2opt.llm_proj.weight"] = ((5120, 768), "llm_proj.weight")  # a 13B checkpoint
    with pytest.raises(ValueError, match=r"blip2opt\.llm_proj\.weight: shape \(5120, 768\)"):
        import_official(model, checkpoints=[_shapes_file(tmp_path / "13b.ckpt", layout, "state_dict")])


def test_weight_without_a_target_parameter_is_an_error(official_meta, tmp_path):
    model, _ = official_meta
    extra = "base_model.model.model.layers.32.self_attn.q_proj.lora_A.default.weight"  # a 40-layer LM
    layout = {f"blip2opt.llm_model.{extra}": ((8, 4096), f"lm.model.{extra}")}
    with pytest.raises(ValueError, match=r"layers\.32\..*no such parameter"):
        import_official(model, checkpoints=[_shapes_file(tmp_path / "deep.ckpt", layout, "state_dict")])


def test_unknown_keys_are_reported_as_skipped(official_meta, tmp_path):
    model, _ = official_meta
    layout: Layout = {
        "blip2opt.some_future_head.weight": ((3, 3), None),
        "blip2opt.llm_model.base_model.model.model.embed_tokens.weight": ((32001, 4096), None),  # full-LM tuning
        "optimizer_step": ((), None),
    }
    report = import_official(model, checkpoints=[_shapes_file(tmp_path / "odd.ckpt", layout, "state_dict")])
    assert report.mapped == {}
    assert report.skipped == {
        "blip2opt.some_future_head.weight": "no counterpart in molm3d",
        "blip2opt.llm_model.base_model.model.model.embed_tokens.weight": "no counterpart in molm3d",
        "optimizer_step": "not a 3D-MoLM model weight",
    }


def test_graph_encoder_inside_a_checkpoint_maps_to_our_encoder():
    # With --tune_gnn the Uni-Mol weights are trained and saved as `graph_encoder.*` (SimpleUniMolModel).
    assert map_molm_key("blip2opt.graph_encoder.encoder.layers.3.fc1.weight") == (
        "encoder.encoder.layers.3.fc1.weight",
        "",
    )
    assert map_molm_key("blip2qformer.graph_encoder.embed_tokens.weight")[0] == "encoder.embed_tokens.weight"


def test_a_failing_file_loads_nothing(small_real, tmp_path):
    before = small_real.ln_graph.weight.detach().clone()
    state = {
        "blip2opt.ln_graph.weight": torch.full((512,), 3.0),
        "blip2opt.llm_proj.weight": torch.zeros(SMALL.lm_hidden + 1, SMALL.hq),
    }
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="llm_proj"):
        import_official(small_real, checkpoints=[tmp_path / "bad.ckpt"])
    torch.testing.assert_close(small_real.ln_graph.weight, before, rtol=0, atol=0)


# 5. files are data, never code --------------------------------------------------------------------


def _leave_marker(path: str) -> None:
    Path(path).write_text("executed")


class _Payload:
    """Unpickling this would call `_leave_marker`: what a malicious checkpoint does with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


@pytest.mark.parametrize("where", ["top", "inside_state"])
def test_pickled_objects_are_refused_not_executed(official_meta, tmp_path, where):
    model, _ = official_meta
    marker = tmp_path / "marker"
    payload = _Payload(marker)
    state = {"blip2opt.ln_graph.weight": torch.zeros(512)}
    obj = {"state_dict": state, "hook": payload} if where == "top" else {"state_dict": {**state, "x": payload}}
    torch.save(obj, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        import_official(model, checkpoints=[tmp_path / "evil.ckpt"])
    assert not marker.exists()


def test_a_file_without_the_expected_entry_is_refused(official_meta, tmp_path):
    model, _ = official_meta
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="expected a dict with a 'model' entry"):
        import_official(model, unimol=tmp_path / "x.pt")
    torch.save([torch.zeros(1)], tmp_path / "y.ckpt")
    with pytest.raises(ValueError, match="expected a dict with a 'state_dict' entry"):
        import_official(model, checkpoints=[tmp_path / "y.ckpt"])


# values land (real model) ------------------------------------------------------------------------


def test_unimol_values_land_and_the_encoder_runs(small_real, tmp_path):
    layout = unimol_layout(SMALL)
    state = _random_state(layout, torch.float32, seed=1)
    state["gbf.stds.weight"] = state["gbf.stds.weight"].abs() + 0.5  # kernel widths as trained
    # Uni-Core checkpoints also carry their training arguments (an argparse.Namespace) under "args".
    args = argparse.Namespace(arch="unimol_base", encoder_layers=15, remove_hydrogen=True)
    torch.save({"args": args, "model": state, "extra_state": {"epoch": 3}}, tmp_path / "unimol.pt")

    report = import_official(small_real, unimol=tmp_path / "unimol.pt")
    own = small_real.state_dict()
    assert report.mapped == _expected_mapping(layout)
    for key, ours in report.mapped.items():
        assert torch.equal(own[ours], state[key]), key
    with torch.no_grad():
        atoms, mask = small_real.encoder(**{k: _molecule()[k] for k in ("src_tokens", "src_distance", "src_edge_type")})
    assert atoms.shape == (1, 6, 512) and not mask.any() and torch.isfinite(atoms).all()


def test_stage1_then_stage2_values_land_and_stage2_overrides(small_real, tmp_path):
    s1_layout, s2_layout = stage1_layout(SMALL), stage2_layout(SMALL)
    s1 = _random_state(s1_layout, torch.bfloat16, seed=2)
    s1["blip2qformer.Qformer.bert.embeddings.position_ids"] = torch.arange(SMALL.max_positions)[None]
    s2 = _random_state(s2_layout, torch.bfloat16, seed=3)
    torch.save({"state_dict": s1, "hyper_parameters": {"bert_name": "scibert"}}, tmp_path / "stage1.ckpt")
    torch.save({"state_dict": s2, "epoch": 9}, tmp_path / "stage2.ckpt")

    report = import_official(small_real, checkpoints=[tmp_path / "stage1.ckpt", tmp_path / "stage2.ckpt"])
    own = small_real.state_dict()
    from_stage2 = set(_expected_mapping(s2_layout).values())
    for key, ours in _expected_mapping(s2_layout).items():
        assert torch.equal(own[ours], s2[key].float()), key
    for key, ours in _expected_mapping(s1_layout).items():
        if ours not in from_stage2:  # text branch, captioning and retrieval heads: stage 1's
            assert torch.equal(own[ours], s1[key].float()), key
    assert set(report.mapped) == set(_expected_mapping(s1_layout)) | set(_expected_mapping(s2_layout))

    # The LoRA weights are live in the peft model, and our own checkpoints would save them.
    lora = dict(small_real.lm.model.named_parameters())
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"
    assert torch.equal(lora[name], s2[f"blip2opt.llm_model.{name}"].float())
    saved = small_real.lm.trainable_state_dict()
    assert torch.equal(saved[f"lora.{name.replace('.default', '')}"], lora[name])
    with torch.no_grad():
        tokens = small_real.molecule_tokens(_molecule())
    assert tokens.shape == (1, SMALL.queries, SMALL.lm_hidden) and torch.isfinite(tokens).all()
