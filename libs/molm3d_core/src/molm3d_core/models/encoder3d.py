"""Uni-Mol 3D molecular encoder in plain PyTorch (no Uni-Core).

Atoms attend to each other with a per-head bias computed from their pairwise distance (a Gaussian
basis with per-edge-type affine terms); each layer's pre-softmax scores become the next layer's bias,
so the pair representation is refined with the atom representation. Parameter names follow the
Uni-Core checkpoint (`embed_tokens`, `gbf`, `gbf_proj`, `encoder.layers.{i}`) so the official
weights load by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..chem.featurize import NUM_ATOM_TYPES, PAD


@dataclass
class UniMolConfig:
    """Defaults reproduce the official "mol_pre_no_h_220816" encoder (15 x 512, 64 heads)."""

    num_layers: int = 15
    embed_dim: int = 512
    ffn_dim: int = 2048
    num_heads: int = 64
    num_kernels: int = 128  # Gaussian basis size K
    num_atom_types: int = NUM_ATOM_TYPES
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    emb_dropout: float = 0.1
    final_head_layer_norm: bool = True  # present in the official weights (delta pair norm loss)

    @classmethod
    def official(cls) -> UniMolConfig:
        return cls()

    @classmethod
    def small(cls) -> UniMolConfig:
        return cls(num_layers=6, embed_dim=256, ffn_dim=1024, num_heads=16, num_kernels=64)

    @classmethod
    def tiny(cls) -> UniMolConfig:
        return cls(num_layers=2, embed_dim=32, ffn_dim=64, num_heads=4, num_kernels=16)


def _gaussian(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    a = math.sqrt(2 * math.pi)
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (a * std)


class GaussianLayer(nn.Module):
    """Distance -> K Gaussian features, with a learned multiplier and bias per edge type."""

    def __init__(self, num_kernels: int, num_edge_types: int) -> None:
        super().__init__()
        self.K = num_kernels
        self.means = nn.Embedding(1, num_kernels)
        self.stds = nn.Embedding(1, num_kernels)
        self.mul = nn.Embedding(num_edge_types, 1)
        self.bias = nn.Embedding(num_edge_types, 1)
        nn.init.uniform_(self.means.weight, 0, 3)
        nn.init.uniform_(self.stds.weight, 0, 3)
        nn.init.constant_(self.bias.weight, 0)
        nn.init.constant_(self.mul.weight, 1)

    def forward(self, dist: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        mul = self.mul(edge_type).type_as(dist)  # (B, L, L, 1)
        bias = self.bias(edge_type).type_as(dist)
        x = (mul * dist.unsqueeze(-1) + bias).expand(-1, -1, -1, self.K)
        mean = self.means.weight.float().view(-1)
        std = self.stds.weight.float().view(-1).abs() + 1e-5
        # The basis is evaluated in fp32: narrow Gaussians underflow in bf16.
        return _gaussian(x.float(), mean, std).type_as(self.means.weight)  # (B, L, L, K)


class NonLinearHead(nn.Module):
    def __init__(self, input_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or input_dim
        self.linear1 = nn.Linear(input_dim, hidden)
        self.linear2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SelfMultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.in_proj = nn.Linear(embed_dim, embed_dim * 3)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D), attn_bias (B*H, L, L) -> output (B, L, D), pre-softmax scores (B*H, L, L)."""
        bsz, length, dim = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, length, self.num_heads, self.head_dim).transpose(1, 2).reshape(-1, length, self.head_dim)

        q, k, v = heads(q) * self.scaling, heads(k), heads(v)
        scores = torch.bmm(q, k.transpose(1, 2)) + attn_bias  # (B*H, L, L)
        probs = F.dropout(torch.softmax(scores.float(), dim=-1).type_as(scores), self.dropout, self.training)
        out = torch.bmm(probs, v).view(bsz, self.num_heads, length, self.head_dim)
        out = out.transpose(1, 2).reshape(bsz, length, dim)
        return self.out_proj(out), scores


class TransformerEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer that also returns its attention scores (the next pair bias)."""

    def __init__(self, cfg: UniMolConfig) -> None:
        super().__init__()
        self.self_attn = SelfMultiheadAttention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = cfg.dropout
        self.activation_dropout = cfg.activation_dropout

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, scores = self.self_attn(self.self_attn_layer_norm(x), attn_bias)
        x = x + F.dropout(h, self.dropout, self.training)
        h = F.dropout(F.gelu(self.fc1(self.final_layer_norm(x))), self.activation_dropout, self.training)
        x = x + F.dropout(self.fc2(h), self.dropout, self.training)
        return x, scores


def norm_deviation(x: torch.Tensor, mask: torch.Tensor, tolerance: float = 1.0) -> torch.Tensor:
    """Uni-Mol's norm regulariser: mean over `mask` of relu(| ||x|| - sqrt(dim) | - tolerance).

    Keeps the atom states (and the pair updates) near the norm a LayerNorm would give them, so the
    pretraining losses cannot grow them without bound before the final LayerNorm hides it.
    """
    norm = torch.sqrt((x.float() ** 2).sum(-1) + 1e-10)
    error = F.relu((norm - x.shape[-1] ** 0.5).abs() - tolerance)
    mask = mask.to(error.dtype)
    return (error * mask).sum() / mask.sum().clamp(min=1e-10)


class PairOutput(NamedTuple):
    """What the pretraining heads read: see `UniMolEncoder.forward(return_pair=True)`."""

    atoms: torch.Tensor  # (B, L, D) after the final LayerNorm
    padding_mask: torch.Tensor  # (B, L) True at padding
    pair: torch.Tensor  # (B, L, L, H) final pair scores, 0 at padding keys
    delta: torch.Tensor  # (B, L, L, H) pair update (final - input bias), after the head LayerNorm
    x_norm: torch.Tensor  # () norm regulariser of the atom states before the final LayerNorm
    delta_norm: torch.Tensor  # () norm regulariser of the pair update before its LayerNorm


class TransformerEncoderWithPair(nn.Module):
    def __init__(self, cfg: UniMolConfig) -> None:
        super().__init__()
        self.emb_dropout = cfg.emb_dropout
        self.emb_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.final_head_layer_norm = nn.LayerNorm(cfg.num_heads) if cfg.final_head_layer_norm else None
        self.layers = nn.ModuleList([TransformerEncoderLayer(cfg) for _ in range(cfg.num_layers)])

    def forward(
        self, emb: torch.Tensor, attn_bias: torch.Tensor, padding_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """emb (B, L, D), attn_bias (B*H, L, L), padding_mask (B, L) True at padding.

        Returns atom states (B, L, D), final pair scores (B, L, L, H), the pair update (B, L, L, H)
        used by the pretraining heads, and the two norm regularisers (Uni-Mol's x_norm and
        delta_pair_repr_norm, taken before the final LayerNorms).
        """
        bsz, length, _ = emb.shape
        x = F.dropout(self.emb_layer_norm(emb), self.emb_dropout, self.training)
        x = x * (~padding_mask).unsqueeze(-1).type_as(x)
        # Padding keys get -inf inside the bias, so every layer ignores them.
        key_mask = padding_mask[:, None, None, :]  # (B, 1, 1, L)
        input_bias = attn_bias.view(bsz, -1, length, length).masked_fill(key_mask, float("-inf"))
        bias = input_bias.view(-1, length, length)
        for layer in self.layers:
            x, bias = layer(x, bias)
        real = ~padding_mask
        x_norm = norm_deviation(x, real)
        x = self.final_layer_norm(x)
        pair = bias.view(bsz, -1, length, length)
        delta = (pair - input_bias).masked_fill(key_mask, 0.0).nan_to_num(0.0)
        pair = pair.masked_fill(key_mask, 0.0).permute(0, 2, 3, 1)  # (B, L, L, H)
        delta = delta.permute(0, 2, 3, 1)
        delta_norm = norm_deviation(delta, real.unsqueeze(-1) & real.unsqueeze(-2))
        if self.final_head_layer_norm is not None:
            delta = self.final_head_layer_norm(delta)
        return x, pair, delta, x_norm, delta_norm


class UniMolEncoder(nn.Module):
    """Atoms + distances -> per-atom states (B, N+2, D)."""

    def __init__(self, config: UniMolConfig) -> None:
        super().__init__()
        self.config = config
        n_types = config.num_atom_types
        self.embed_tokens = nn.Embedding(n_types, config.embed_dim, padding_idx=PAD)
        self.gbf = GaussianLayer(config.num_kernels, n_types * n_types)
        self.gbf_proj = NonLinearHead(config.num_kernels, config.num_heads)
        self.encoder = TransformerEncoderWithPair(config)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_distance: torch.Tensor,
        src_edge_type: torch.Tensor,
        return_pair: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | PairOutput:
        """src_tokens (B, L), src_distance (B, L, L) Å, src_edge_type (B, L, L).

        Returns (atom states (B, L, D), padding_mask (B, L) True at padding); with `return_pair` a
        PairOutput, which adds what the pretraining heads and regularisers read.
        """
        padding_mask = src_tokens.eq(PAD)
        x = self.embed_tokens(src_tokens)
        length = src_tokens.shape[1]
        gbf = self.gbf(src_distance, src_edge_type)  # (B, L, L, K)
        bias = self.gbf_proj(gbf).permute(0, 3, 1, 2).reshape(-1, length, length)  # (B*H, L, L)
        x, pair, delta, x_norm, delta_norm = self.encoder(x.type_as(bias), bias, padding_mask)
        if return_pair:
            return PairOutput(x, padding_mask, pair, delta, x_norm, delta_norm)
        return x, padding_mask
