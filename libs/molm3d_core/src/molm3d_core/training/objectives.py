"""The loss of each training stage, as an objective the loop can call.

- stage 0: supervised 3D pretraining of the encoder: property heads on every molecule's targets
  (QM9's DFT properties, RDKit descriptors), with Uni-Mol's masked-atom and denoising losses on a
  corrupted share of each batch as an auxiliary;
- stage 1: Q-Former with contrastive (max over queries) + matching on hard negatives + captioning,
  plus the properties regressed from the query outputs, so the molecule tokens carry them;
- stage 2: LM loss on captions (projector and LoRA; the Q-Former too with freeze_qformer=False);
- stage 3: the same LM loss on every task, tasks sampled with p ~ weight * N ** 0.25.
Each objective names the parameters it trains; everything else is frozen (and in eval mode).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..chem import CLS, MASK, NUM_ATOM_TYPES, PAD, SEP, UNK, collate
from ..models import MoLM3D
from ..models.encoder3d import NonLinearHead
from ..models.heads import regression_loss
from ..models.molm3d import DEC_TOKEN
from ..prompts import CAPTION_INSTRUCTION
from .config import TrainConfig
from .data import TaskMixture, TrainingData, molecules_by_source, step_rng

Batch = dict[str, Any]
# Uni-Mol's normalisation of pairwise distances for its distance head (its pretraining set's mean/std).
DIST_MEAN, DIST_STD = 6.312581655060595, 3.3899264663911888
ELEMENT_TOKENS = np.arange(UNK + 1, MASK)  # real element types: what a "random" masked atom becomes


class UniMolPretrainHeads(nn.Module):
    """Uni-Mol's heads (names as in Uni-Mol): atom types, coordinates from pair updates, distances."""

    def __init__(self, model: MoLM3D) -> None:
        super().__init__()
        d, h = model.config.encoder.embed_dim, model.config.encoder.num_heads
        self.lm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, NUM_ATOM_TYPES))
        self.pair2coord_proj = NonLinearHead(h, 1)
        self.dist_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 1))


def molecule_spread(queries: torch.Tensor) -> float:
    """1 - mean cosine between different molecules' representations (B, ...): near 0 means they hardly
    depend on the molecule (seen when a stage collapses: the signal to watch in metrics)."""
    if queries.shape[0] < 2:
        return 0.0
    with torch.no_grad():
        flat = F.normalize(queries.detach().float().flatten(1), dim=-1)
        cos = flat @ flat.t()
        n = cos.shape[0]
        return float(1 - (cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def effective_rank(states: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (B, ...) batch: how many
    directions the molecules spread over (1 when they all differ along one line only)."""
    with torch.no_grad():
        x = states.detach().float().flatten(1)
        x = x - x.mean(0, keepdim=True)
        s = torch.linalg.svdvals(x)
        if float(s.sum()) <= 1e-12:
            return 0.0
        p = s / s.sum()
        return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))


def health(states: torch.Tensor, prefix: str) -> dict[str, float]:
    return {f"{prefix}_spread": molecule_spread(states), f"{prefix}_rank": effective_rank(states)}


def mask_atoms(
    tokens: torch.Tensor, rng: np.random.Generator, mask_prob: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uni-Mol's masking of atom types, per molecule: int(mask_prob * n_atoms + U(0, 1)) atoms are
    selected (so small molecules sometimes have none); of those, 80 % become [MASK], 10 % keep their
    type and 10 % get a random element type.

    Returns (corrupted tokens, selected (B, L) bool: where the losses apply, noised (B, L) bool:
    selected atoms whose type was changed, which also get coordinate noise).
    """
    corrupted = tokens.clone()
    selected = torch.zeros_like(tokens, dtype=torch.bool)
    noised = torch.zeros_like(selected)
    for b in range(tokens.shape[0]):
        row = tokens[b]
        atoms = torch.nonzero((row != PAD) & (row != CLS) & (row != SEP)).flatten().numpy()
        n = int(mask_prob * len(atoms) + rng.random())
        if n == 0:
            continue
        chosen = rng.choice(atoms, size=n, replace=False)
        fate = rng.random(n)  # < 0.8 [MASK], < 0.9 unchanged, else random
        selected[b, chosen] = True
        for pos, f in zip(chosen, fate, strict=True):
            if f < 0.8:
                corrupted[b, pos] = MASK
            elif f >= 0.9:
                corrupted[b, pos] = int(rng.choice(ELEMENT_TOKENS))
            noised[b, pos] = bool(f < 0.8 or f >= 0.9)
    return corrupted, selected, noised


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


class PropertyTargets:
    """Standardised property targets of the training molecules, sampled in one-source batches."""

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData, refit: bool) -> None:
        head = model.property_head
        if head is None:
            raise ValueError("this model has no property heads (config.property_head.targets is empty)")
        self.names = head.targets
        self.by_source = molecules_by_source(data)
        ids = sorted(data.molecules)
        self.row = {m: i for i, m in enumerate(ids)}
        values, present = data.targets(ids, self.names)
        if not present.any():
            raise ValueError(f"no training molecule has any of the targets {self.names}: rebuild the data "
                             "with this version (`molm3d data build` writes molecules' targets)")  # fmt: skip
        if refit or not head.trained:
            head.set_statistics(torch.from_numpy(values), torch.from_numpy(present))
        self.z = head.standardise(torch.from_numpy(values)).nan_to_num(0.0)
        self.present = torch.from_numpy(present)
        unknown = sorted(set(cfg.target_weights) - set(self.names))
        if unknown:
            raise ValueError(f"target_weights names unknown targets {unknown}; the heads predict {self.names}")
        self.weights = torch.tensor([cfg.target_weights.get(n, 1.0) for n in self.names])

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        return self.by_source.sample(rng, n)

    def rows(self, mol_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor([self.row[m] for m in mol_ids])
        return self.z[idx], self.present[idx]

    def loss(self, z_pred: torch.Tensor, mol_ids: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        z_true, present = (t.to(z_pred.device) for t in self.rows(mol_ids))
        loss = regression_loss(z_pred, z_true, present, self.weights.to(z_pred.device))
        parts = {}
        with torch.no_grad():  # per-target MAE in standard deviations, for the metrics log
            err = (z_pred.detach().float() - z_true).abs() * present
            for j, name in enumerate(self.names):
                if name in ("homo", "lumo", "gap") and present[:, j].any():
                    parts[f"{name}_mae_z"] = float(err[:, j].sum() / present[:, j].sum())
        return loss, parts


class EncoderPretraining(Objective):
    """Stage 0: property heads on clean molecules + Uni-Mol's denoising on a corrupted share."""

    stage = 0

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> None:
        super().__init__(model, cfg, data)
        self.heads = UniMolPretrainHeads(model).to(model.device)
        self.targets = PropertyTargets(model, cfg, data, refit=True)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"pretrain_heads": self.heads}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        heads = [(f"pretrain_heads.{n}", p) for n, p in self.heads.named_parameters()]
        return self._params("encoder.", "property_head.") + heads

    def batch(self, step: int, micro: int) -> Batch:
        rng = step_rng(self.cfg.seed, self.stage, step, micro)
        ids = self.targets.sample(rng, self.cfg.batch_size)
        clean = self._features(ids, rng)
        n_noisy = round(self.cfg.denoise_fraction * len(ids)) if self.cfg.denoise_weight > 0 else 0
        tokens, coords, dist = clean["src_tokens"], clean["src_coord"], clean["src_distance"]
        noisy_tokens, selected, noised = mask_atoms(tokens[:n_noisy], rng, self.cfg.mask_prob)
        noise = torch.from_numpy(rng.uniform(-1, 1, size=coords[:n_noisy].shape).astype(np.float32))
        noisy_coords = torch.where(noised.unsqueeze(-1), coords[:n_noisy] + noise * self.cfg.coord_noise,
                                   coords[:n_noisy])  # fmt: skip
        noisy_coords = noisy_coords * (noisy_tokens != PAD).unsqueeze(-1)
        all_tokens = torch.cat([tokens, noisy_tokens])
        all_coords = torch.cat([coords, noisy_coords])
        real = (all_tokens != PAD).unsqueeze(-1) & (all_tokens != PAD).unsqueeze(-2)
        all_dist = torch.cdist(all_coords, all_coords) * real
        edge = all_tokens.unsqueeze(-1) * NUM_ATOM_TYPES + all_tokens.unsqueeze(-2)
        return {"ids": ids, "tokens": all_tokens, "coords": all_coords, "dist": all_dist, "edge": edge,
                "selected": selected, "target_tokens": tokens[:n_noisy], "target_coords": coords[:n_noisy],
                "target_dist": dist[:n_noisy]}  # fmt: skip

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        dev = self.model.device
        out = self.model.encoder(batch["tokens"].to(dev), batch["dist"].to(dev), batch["edge"].to(dev),
                                 return_pair=True)  # fmt: skip
        n = len(batch["ids"])
        z = self.model.property_head(out.atoms[:n], out.padding_mask[:n])
        prop, parts = self.targets.loss(z, batch["ids"])
        parts = {"property": prop.item(), **parts, **health(out.atoms[:n, 0], "cls")}
        total = prop
        if self.cfg.denoise_weight > 0 and bool(batch["selected"].any()):
            denoise, denoise_parts = self._unimol_loss(out, batch, n)
            total = total + self.cfg.denoise_weight * denoise
            parts.update(denoise_parts)
        return total, parts

    def _unimol_loss(self, out, batch: Batch, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Uni-Mol's pretraining loss on the corrupted molecules (rows n: of the forward pass)."""
        dev = self.model.device
        sel = batch["selected"].to(dev)
        x, padding = out.atoms[n:], out.padding_mask[n:]
        coords = batch["coords"][n:].to(dev)
        token = F.cross_entropy(self.heads.lm_head(x[sel]).float(), batch["target_tokens"].to(dev)[sel])
        # Coordinates: each atom moves along its pair directions, weighted by the pair update.
        n_atoms = (~padding).sum(1).view(-1, 1, 1, 1).clamp(min=2) - 1
        delta_pos = coords.unsqueeze(1) - coords.unsqueeze(2)  # (B, L, L, 3)
        coord = coords + (delta_pos / n_atoms * self.heads.pair2coord_proj(out.delta[n:])).sum(2)
        coord_loss = F.smooth_l1_loss(coord[sel].float(), batch["target_coords"].to(dev)[sel], beta=1.0)
        pair = out.pair[n:]
        dist = self.heads.dist_head(pair).squeeze(-1)
        dist = 0.5 * (dist + dist.transpose(1, 2))  # (B, L, L)
        target = batch["target_dist"].to(dev)
        rows = sel.unsqueeze(-1) & (target > 0)  # selected atoms to every other real position
        # Normalised as Uni-Mol does: raw Å made this term's gradient 15x the atom-type loss's.
        dist_loss = F.smooth_l1_loss(dist[rows].float(), (target[rows] - DIST_MEAN) / DIST_STD, beta=1.0)
        # Uni-Mol's weights: types 1, coordinates 5, distances 10, the two norm regularisers 0.01 each.
        total = token + 5 * coord_loss + 10 * dist_loss + 0.01 * out.x_norm + 0.01 * out.delta_norm
        return total, {"token": token.item(), "coord": coord_loss.item(), "dist": dist_loss.item(),
                       "x_norm": out.x_norm.item(), "delta_norm": out.delta_norm.item()}  # fmt: skip


def caption_template(text: str, name: str | None) -> str:
    """The caption with the molecule's own name taken out: ChEBI captions are built from class
    definitions, so captions of molecules of the same classes differ only by the name."""
    return text.replace(name, "\0") if name else text


def hard_negatives(sim: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP-2's hard negatives from a (B mol, B text) similarity: for each molecule a wrong text
    drawn with p ~ softmax over that molecule's row, for each text a wrong molecule drawn with
    p ~ softmax over that text's column. Returns (neg_text per molecule, neg_mol per text)."""
    with torch.no_grad():
        sim = sim.detach().float().cpu()
        w_m2t = torch.softmax(sim, dim=1).fill_diagonal_(0) + 1e-8
        w_t2m = torch.softmax(sim.t(), dim=1).fill_diagonal_(0) + 1e-8
        neg_text = torch.multinomial(w_m2t, 1, generator=generator).squeeze(1)
        neg_mol = torch.multinomial(w_t2m, 1, generator=generator).squeeze(1)
    return neg_text, neg_mol


class QFormerPretraining(Objective):
    stage = 1

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> None:
        super().__init__(model, cfg, data)
        self.pairs = [(e["mol_id"], e["answer"]) for e in data.examples if e["task"] == "caption"]
        if len(self.pairs) < 2:
            raise ValueError("stage 1 needs at least two molecule-caption pairs in the training split")
        self.dec_id = model.text_tokenizer.convert_tokens_to_ids(DEC_TOKEN)
        use_properties = cfg.property_batch_size > 0 and cfg.property_weight > 0 and model.property_head is not None
        self.targets = PropertyTargets(model, cfg, data, refit=False) if use_properties else None

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        rows = self.model.pretrained_text_rows
        words = self.model.qformer.bert.embeddings.word_embeddings.weight
        if rows and not getattr(words, "_molm3d_frozen_rows", False):
            # Only added rows ([DEC]) learn; the BERT's rows stay loadable by reference (QFormerConfig).
            mask = torch.ones(words.shape[0], 1, device=words.device)
            mask[:rows] = 0
            words.register_hook(lambda grad: grad * mask.to(grad.dtype))
            words._molm3d_frozen_rows = True
        prefixes = ["qformer.", "ln_graph.", "graph_proj.", "text_proj.", "gtm_head."]
        if self.targets is not None:
            prefixes.append("query_property_head.")
        return self._params(*prefixes)

    def batch(self, step: int, micro: int) -> Batch:
        rng = step_rng(self.cfg.seed, self.stage, step, micro)
        # Distinct molecules and distinct caption templates: two captions that differ only by the
        # molecule's name would be false negatives of each other.
        picked: dict[str, str] = {}
        templates: set[str] = set()
        for i in rng.permutation(len(self.pairs)):
            mol_id, text = self.pairs[i]
            template = caption_template(text, self.data.molecules[mol_id].get("name"))
            if mol_id in picked or template in templates:
                continue
            picked[mol_id] = text
            templates.add(template)
            if len(picked) == self.cfg.batch_size:
                break
        batch = {"features": self._features(list(picked), rng), "texts": list(picked.values()),
                 "seed": int(rng.integers(2**31))}  # fmt: skip
        if self.targets is not None:
            ids = self.targets.sample(rng, self.cfg.property_batch_size)
            batch["property_ids"], batch["property_features"] = ids, self._features(ids, rng)
        return batch

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        m, temp = self.model, self.model.config.temperature
        atoms, atom_mask = m.encode_atoms(batch["features"])
        enc = m.tokenize_texts(batch["texts"])
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
        # 2. matching on hard negatives: a wrong partner drawn in proportion to its similarity
        generator = torch.Generator().manual_seed(batch["seed"])
        neg_text, neg_mol = (t.to(sim.device) for t in hard_negatives(sim, generator))
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
        total = itc + itm + lm
        parts = {"itc": itc.item(), "itm": itm.item(), "lm": lm.item(), **health(queries, "query")}
        # 4. the properties, from the query outputs of a separate batch of molecules
        if self.targets is not None:
            p_atoms, p_mask = m.encode_atoms(batch["property_features"])
            z = m.query_property_head(m.qformer(p_atoms, p_mask)[:, :nq])
            prop, prop_parts = self.targets.loss(z, batch["property_ids"])
            total = total + self.cfg.property_weight * prop
            parts.update(property=prop.item(), **prop_parts)
        return total, parts


class InstructionTuning(Objective):
    """Stage 2 (captions only) and stage 3 (all tasks) share the LM loss."""

    def __init__(self, model: MoLM3D, cfg: TrainConfig, data: TrainingData, stage: int) -> None:
        super().__init__(model, cfg, data)
        self.stage = stage
        tasks = ("caption",) if stage == 2 else cfg.tasks
        groups = data.by_task(tasks)
        if stage == 3:
            self.mixture = TaskMixture(groups, cfg.task_exponent, cfg.task_weights)
        else:
            self.mixture = TaskMixture(groups, 1.0)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        if not self.model.config.molecule_tokens:
            return self._lora_params()  # SMILES-only baseline: LoRA alone
        molecule_side = () if self.cfg.freeze_qformer else ("qformer.", "ln_graph.")
        return self._params(*molecule_side, "llm_proj.") + self._lora_params()

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
        mol, parts = None, {}
        if batch["features"] is not None:
            if self.cfg.freeze_qformer:
                with torch.no_grad():  # nothing before the projector trains: no graph to keep
                    queries = self.model.query_molecules(batch["features"])
            else:
                queries = self.model.query_molecules(batch["features"])
            mol = self.model.llm_proj(queries)
            parts = health(queries, "query")
        loss = self.model.lm.loss(batch["tokens"], mol)
        return loss, {"lm": loss.item(), **parts}


def build_objective(stage: int, model: MoLM3D, cfg: TrainConfig, data: TrainingData) -> Objective:
    if stage == 0:
        return EncoderPretraining(model, cfg, data)
    if stage == 1:
        return QFormerPretraining(model, cfg, data)
    if stage in (2, 3):
        return InstructionTuning(model, cfg, data, stage)
    raise ValueError(f"unknown stage {stage}; stages are 0, 1, 2, 3")
