"""The loss of each training stage, as an objective the loop can call.

- stage 0: Uni-Mol pretraining of the 3D encoder: masked atom types + coordinate denoising +
  distance recovery on the noised atoms;
- stage 1: Q-Former with contrastive (max over queries) + matching on hard negatives + captioning;
- stage 2: LM loss on captions (Q-Former, ln_graph, projector, LoRA);
- stage 3: the same LM loss on every task, tasks sampled with p ~ N ** 0.25.
Each objective names the parameters it trains; everything else is frozen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..chem import MASK, NUM_ATOM_TYPES, PAD, collate
from ..models import MoLM3D
from ..models.encoder3d import NonLinearHead
from ..models.molm3d import DEC_TOKEN
from ..prompts import CAPTION_INSTRUCTION
from .config import TrainConfig
from .data import TaskMixture, TrainingData, step_rng

Batch = dict[str, Any]


class UniMolPretrainHeads(nn.Module):
    """Uni-Mol's heads (names as in Uni-Mol): atom types, coordinates from pair updates, distances."""

    def __init__(self, model: MoLM3D) -> None:
        super().__init__()
        d, h = model.config.encoder.embed_dim, model.config.encoder.num_heads
        self.lm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, NUM_ATOM_TYPES))
        self.pair2coord_proj = NonLinearHead(h, 1)
        self.dist_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 1))


def molecule_spread(queries: torch.Tensor) -> float:
    """1 - mean cosine between different molecules' query outputs (B, Q, H): near 0 means the molecule
    tokens hardly depend on the molecule (seen early in training: the signal to watch in metrics)."""
    if queries.shape[0] < 2:
        return 0.0
    with torch.no_grad():
        flat = F.normalize(queries.detach().float().flatten(1), dim=-1)
        cos = flat @ flat.t()
        n = cos.shape[0]
        return float(1 - (cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


class Objective:
    stage: int
    model: MoLM3D

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> None:
        self.model, self.cfg, self.data = model, cfg, data

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def batch(self, step: int, micro: int) -> Batch:
        raise NotImplementedError

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules outside the model whose weights the resumable state must keep."""
        return {}

    def _features(self, mol_ids: list[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        max_atoms = self.model.config.max_atoms
        return collate([self.data.features(m, rng, self.cfg.etkdg_prob, max_atoms) for m in mol_ids])

    def _params(self, *prefixes: str) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if n.startswith(prefixes)]

    def _lora_params(self) -> list[tuple[str, nn.Parameter]]:
        """The LM's LoRA weights: all that trains in the LM (the base stays frozen and referenced)."""
        return [(n, p) for n, p in self._params("lm.") if "lora_" in n]


class EncoderPretraining(Objective):
    stage = 0

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> None:
        super().__init__(model, cfg, data)
        self.heads = UniMolPretrainHeads(model).to(model.device)
        self.mol_ids = sorted(data.molecules)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"pretrain_heads": self.heads}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        heads = [(f"pretrain_heads.{n}", p) for n, p in self.heads.named_parameters()]
        return self._params("encoder.") + heads

    def batch(self, step: int, micro: int) -> Batch:
        rng = step_rng(self.cfg.seed, self.stage, step, micro)
        ids = [self.mol_ids[i] for i in rng.integers(len(self.mol_ids), size=self.cfg.batch_size)]
        clean = self._features(ids, rng)
        tokens, coords = clean["src_tokens"].clone(), clean["src_coord"].clone()
        real = tokens > 2  # atoms, not [PAD]/[CLS]/[SEP]
        masked = real & torch.from_numpy(rng.random(tokens.shape) < self.cfg.mask_prob)
        masked[torch.arange(len(ids)), real.float().argmax(1)] |= ~masked.any(1)  # at least one per molecule
        tokens[masked] = MASK
        noise = torch.from_numpy(rng.uniform(-1, 1, size=coords.shape).astype(np.float32)) * self.cfg.coord_noise
        coords = torch.where(masked.unsqueeze(-1), coords + noise, coords)
        dist = torch.cdist(coords, coords)
        edge = tokens.unsqueeze(-1) * NUM_ATOM_TYPES + tokens.unsqueeze(-2)
        return {"tokens": tokens, "coords": coords, "dist": dist, "edge": edge, "masked": masked,
                "target_tokens": clean["src_tokens"], "target_coords": clean["src_coord"],
                "target_dist": clean["src_distance"]}  # fmt: skip

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        b = {k: v.to(self.model.device) for k, v in batch.items()}
        x, padding, pair, delta = self.model.encoder(b["tokens"], b["dist"], b["edge"], return_pair=True)
        masked = b["masked"]
        token_loss = F.cross_entropy(self.heads.lm_head(x[masked]).float(), b["target_tokens"][masked])
        # Coordinates: each atom moves along its pair directions, weighted by the pair update.
        n_atoms = (~padding).sum(1).view(-1, 1, 1, 1).clamp(min=2) - 1
        delta_pos = b["coords"].unsqueeze(1) - b["coords"].unsqueeze(2)  # (B, L, L, 3)
        coord = b["coords"] + (delta_pos / n_atoms * self.heads.pair2coord_proj(delta)).sum(2)
        coord_loss = F.smooth_l1_loss(coord[masked].float(), b["target_coords"][masked], beta=1.0)
        pair_sym = 0.5 * (pair + pair.transpose(1, 2))
        dist = self.heads.dist_head(pair_sym).squeeze(-1)  # (B, L, L)
        dist_mask = masked.unsqueeze(-1) & (b["tokens"] != PAD).unsqueeze(1)
        dist_loss = F.smooth_l1_loss(dist[dist_mask].float(), b["target_dist"][dist_mask], beta=1.0)
        # Uni-Mol's weights: token 1, coordinates 5, distances 10.
        total = token_loss + 5 * coord_loss + 10 * dist_loss
        return total, {"token": token_loss.item(), "coord": coord_loss.item(), "dist": dist_loss.item()}


class QFormerPretraining(Objective):
    stage = 1

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> None:
        super().__init__(model, cfg, data)
        self.pairs = [(e["mol_id"], e["answer"]) for e in data.examples if e["task"] == "caption"]
        if len(self.pairs) < 2:
            raise ValueError("stage 1 needs at least two molecule-caption pairs in the training split")
        self.dec_id = model.text_tokenizer.convert_tokens_to_ids(DEC_TOKEN)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        rows = self.model.pretrained_text_rows
        words = self.model.qformer.bert.embeddings.word_embeddings.weight
        if rows and not getattr(words, "_molm3d_frozen_rows", False):
            # Only added rows ([DEC]) learn; the BERT's rows stay loadable by reference (QFormerConfig).
            mask = torch.ones(words.shape[0], 1, device=words.device)
            mask[:rows] = 0
            words.register_hook(lambda grad: grad * mask.to(grad.dtype))
            words._molm3d_frozen_rows = True
        return self._params("qformer.", "ln_graph.", "graph_proj.", "text_proj.", "gtm_head.")

    def batch(self, step: int, micro: int) -> Batch:
        rng = step_rng(self.cfg.seed, self.stage, step, micro)
        # Distinct molecules: a batch holding one molecule twice would have two positives per row.
        picked: dict[str, str] = {}
        for i in rng.permutation(len(self.pairs)):
            mol_id, text = self.pairs[i]
            picked.setdefault(mol_id, text)
            if len(picked) == self.cfg.batch_size:
                break
        features = self._features(list(picked), rng)
        return {"features": features, "texts": list(picked.values()), "seed": int(rng.integers(2**31))}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        m, temp = self.model, self.model.config.temperature
        atoms, atom_mask = m.encode_atoms(batch["features"])
        enc = m.tokenize_texts(batch["texts"], max_length=self.cfg.max_text_tokens)
        ids, text_mask = enc["input_ids"], enc["attention_mask"]
        nq = m.num_query_tokens
        # 1. contrastive: max over query tokens, both directions
        queries = m.qformer(atoms, atom_mask)[:, :nq]
        mol_emb = F.normalize(m.graph_proj(queries), dim=-1)  # (B, Q, E)
        text_hidden = m.qformer(None, None, ids, text_mask, use_queries=False)
        text_emb = F.normalize(m.text_proj(text_hidden[:, 0]), dim=-1)  # (B, E)
        sim = m.similarity(mol_emb, text_emb) / temp  # (B, B)
        target = torch.arange(sim.shape[0], device=sim.device)
        itc = (F.cross_entropy(sim.float(), target) + F.cross_entropy(sim.t().float(), target)) / 2
        # 2. matching on hard negatives: sample a wrong partner in proportion to its similarity
        with torch.no_grad():
            gen = torch.Generator().manual_seed(batch["seed"])
            w = torch.softmax(sim.float().cpu(), dim=1).fill_diagonal_(0) + 1e-8
            neg_text = torch.multinomial(w, 1, generator=gen).squeeze(1).to(sim.device)
            neg_mol = torch.multinomial(w.t().contiguous(), 1, generator=gen).squeeze(1).to(sim.device)
        all_atoms = torch.cat([atoms, atoms, atoms[neg_mol]])
        all_mask = torch.cat([atom_mask, atom_mask, atom_mask[neg_mol]])
        all_ids = torch.cat([ids, ids[neg_text], ids])
        all_text_mask = torch.cat([text_mask, text_mask[neg_text], text_mask])
        joint = m.qformer(all_atoms, all_mask, all_ids, all_text_mask)
        itm_logits = m.gtm_head(joint[:, :nq]).mean(1)  # (3B, 2)
        b = ids.shape[0]
        itm_target = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(sim.device)
        itm = F.cross_entropy(itm_logits.float(), itm_target)
        # 3. captioning: [DEC] starts the text, which sees all queries and its own past
        dec_ids = ids.clone()
        dec_ids[:, 0] = self.dec_id
        hidden = m.qformer(atoms, atom_mask, dec_ids, text_mask, text_mode="causal")[:, nq:]
        logits = m.qformer.text_logits(hidden[:, :-1]).float()
        labels = dec_ids[:, 1:].masked_fill(text_mask[:, 1:] == 0, -100)
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        parts = {"itc": itc.item(), "itm": itm.item(), "lm": lm.item(), "molecule_spread": molecule_spread(queries)}
        return itc + itm + lm, parts


class InstructionTuning(Objective):
    """Stage 2 (captions only) and stage 3 (all tasks) share the LM loss."""

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData, stage: int) -> None:
        super().__init__(model, cfg, data)
        self.stage = stage
        tasks = ("caption",) if stage == 2 else cfg.tasks
        self.mixture = TaskMixture(data.by_task(tasks), cfg.task_exponent if stage == 3 else 1.0)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        if not self.model.config.molecule_tokens:
            return self._lora_params()  # SMILES-only baseline: LoRA alone
        return self._params("qformer.", "ln_graph.", "llm_proj.") + self._lora_params()

    def batch(self, step: int, micro: int) -> Batch:
        rng = step_rng(self.cfg.seed, self.stage, step, micro)
        examples = self.mixture.sample(rng, self.cfg.batch_size)
        smiles = [self.data.molecules[e["mol_id"]]["smiles"] for e in examples]
        instructions = [e["instruction"] or CAPTION_INSTRUCTION for e in examples]
        prompts = [self.model.prompt(i, s) for i, s in zip(instructions, smiles, strict=True)]
        targets = [" " + e["answer"] for e in examples]
        tokens = self.model.lm.tokenize(prompts, targets, max_target_tokens=self.cfg.max_target_tokens)
        features = self._features([e["mol_id"] for e in examples], rng) if self.model.config.molecule_tokens else None
        return {"tokens": tokens, "features": features, "tasks": [e["task"] for e in examples]}

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mol = self.model.molecule_tokens(batch["features"]) if batch["features"] is not None else None
        loss = self.model.lm.loss(batch["tokens"], mol)
        return loss, {"lm": loss.item(), **({"molecule_spread": molecule_spread(mol)} if mol is not None else {})}


def build_objective(stage: int, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> Objective:
    if stage == 0:
        return EncoderPretraining(model, cfg, data)
    if stage == 1:
        return QFormerPretraining(model, cfg, data)
    if stage in (2, 3):
        return InstructionTuning(model, cfg, data, stage)
    raise ValueError(f"unknown stage {stage}; stages are 0, 1, 2, 3")
