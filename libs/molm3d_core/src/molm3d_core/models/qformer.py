"""Q-Former (BLIP-2): BERT layers whose learned query tokens cross-attend to the 3D encoder.

The queries and an optional text share self-attention; only the queries cross-attend to the atoms
(every `cross_attention_freq` layers) and they have their own feed-forward (`intermediate_query`,
`output_query`). Names follow BLIP-2 / 3D-MoLM (`bert.encoder.layer.{i}.crossattention`,
`query_tokens`, `cls.predictions`) so official checkpoints and Hugging Face BERT weights load by name.

Attention masks here are always 1/True = attend. (The reference passed the encoder's padding mask,
True at padding, as an attention mask: its batches attended only to padding.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..assets import resolve_asset

TextMode = Literal["bidirectional", "causal"]


@dataclass
class QFormerConfig:
    """Defaults: BERT-base (SciBERT) as in 3D-MoLM; `bert_path` gives the initial BERT weights."""

    vocab_size: int = 31_091  # SciBERT scivocab (31,090) + [DEC]
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    encoder_width: int = 512  # 3D encoder hidden size
    cross_attention_freq: int = 2
    num_query_tokens: int = 8
    bert_path: str | None = None  # HF BERT folder (tokenizer + weights), or "packaged:all-minilm-l6-v2"
    # False: the pretrained BERT vocabulary rows stay as loaded from `bert_path` (only added rows such
    # as [DEC] train), so checkpoints reference them instead of storing them (~23 MB in fp16 for MiniLM).
    train_word_embeddings: bool = False

    @classmethod
    def official(cls, bert_path: str | None = None) -> QFormerConfig:
        return cls(bert_path=bert_path, train_word_embeddings=True)  # as the reference trains them

    @classmethod
    def small(cls) -> QFormerConfig:
        """all-MiniLM-L6-v2 (6 x 384, 12 heads), packaged with the install."""
        return cls(
            vocab_size=30_523,  # 30,522 + [DEC]
            hidden_size=384,
            num_layers=6,
            num_heads=12,
            intermediate_size=1536,
            encoder_width=256,
            bert_path="packaged:all-minilm-l6-v2",
        )

    @classmethod
    def tiny(cls) -> QFormerConfig:
        return cls(
            vocab_size=30_523,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            encoder_width=32,
            bert_path="packaged:all-minilm-l6-v2",  # tokenizer only: shapes differ, weights stay random
        )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean/0-1 attend mask -> additive float mask (0 where attend, dtype min elsewhere)."""
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


class BertAttention(nn.Module):
    """`self.{query,key,value}` + `output.{dense,LayerNorm}` (residual inside), as in BERT."""

    def __init__(self, cfg: QFormerConfig, kv_width: int | None = None) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.self = nn.Module()
        self.self.query = nn.Linear(h, h)
        self.self.key = nn.Linear(kv_width or h, h)
        self.self.value = nn.Linear(kv_width or h, h)
        self.output = nn.Module()
        self.output.dense = nn.Linear(h, h)
        self.output.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, H), kv (B, S, W), mask additive (B, 1, T or 1, S) -> (B, T, H)."""
        b, t, h = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, self.num_heads, h // self.num_heads).transpose(1, 2)

        q, k, v = heads(self.self.query(x)), heads(self.self.key(kv)), heads(self.self.value(kv))
        drop = self.dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=drop)
        ctx = ctx.transpose(1, 2).reshape(b, t, h)
        out = F.dropout(self.output.dense(ctx), self.dropout, self.training)
        return self.output.LayerNorm(out + x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class BertOutput(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, has_cross_attention: bool) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.attention = BertAttention(cfg)
        self.crossattention = BertAttention(cfg, kv_width=cfg.encoder_width) if has_cross_attention else None
        self.intermediate, self.output = BertIntermediate(cfg), BertOutput(cfg)
        self.intermediate_query, self.output_query = BertIntermediate(cfg), BertOutput(cfg)

    def _ffn(self, x: torch.Tensor, inter: BertIntermediate, out: BertOutput) -> torch.Tensor:
        h = F.dropout(out.dense(F.gelu(inter.dense(x))), self.dropout, self.training)
        return out.LayerNorm(h + x)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        num_queries: int,
        atoms: torch.Tensor | None,
        atom_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.attention(x, x, self_mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        parts = []
        if num_queries:
            if self.crossattention is not None and atoms is not None:
                queries = self.crossattention(queries, atoms, atom_mask)
            parts.append(self._ffn(queries, self.intermediate_query, self.output_query))
        if text.shape[1]:
            parts.append(self._ffn(text, self.intermediate, self.output))
        return torch.cat(parts, dim=1)


class QFormer(nn.Module):
    """Queries (and optionally text) -> hidden states (B, Q + T, H)."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.bert = nn.Module()
        self.bert.embeddings = nn.Module()
        self.bert.embeddings.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=0)
        self.bert.embeddings.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.bert.embeddings.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(
            QFormerLayer(config, i % config.cross_attention_freq == 0) for i in range(config.num_layers)
        )
        # Captioning head of stage 1 (BERT's MLM head; decoder weight tied to the word embeddings).
        self.cls = nn.Module()
        self.cls.predictions = nn.Module()
        self.cls.predictions.transform = nn.Module()
        self.cls.predictions.transform.dense = nn.Linear(h, h)
        self.cls.predictions.transform.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.cls.predictions.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, h))
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        atoms: torch.Tensor | None,
        atom_mask: torch.Tensor | None,
        input_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        use_queries: bool = True,
        text_mode: TextMode = "bidirectional",
    ) -> torch.Tensor:
        """Run queries and/or text through the Q-Former.

        atoms (B, L, W) encoder states, atom_mask (B, L) True = real atom; input_ids/text_mask (B, T).
        `text_mode="causal"` is the captioning mask: queries see queries only, text sees all
        queries and the text before it.
        """
        emb = self.bert.embeddings
        parts, masks = [], []
        if use_queries:
            b = atoms.shape[0] if atoms is not None else input_ids.shape[0]
            parts.append(self.query_tokens.expand(b, -1, -1))
            masks.append(torch.ones(b, self.config.num_query_tokens, dtype=torch.bool, device=parts[0].device))
        if input_ids is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(emb.word_embeddings(input_ids) + emb.position_embeddings(pos))
            masks.append(text_mask.bool() if text_mask is not None else input_ids.ne(0))
        x = F.dropout(emb.LayerNorm(torch.cat(parts, dim=1)), self.config.dropout, self.training)
        key_mask = torch.cat(masks, dim=1)  # (B, Q + T)
        num_queries = self.config.num_query_tokens if use_queries else 0
        self_mask = key_mask[:, None, None, :]  # (B, 1, 1, Q + T)
        if text_mode == "causal" and input_ids is not None:
            total = key_mask.shape[1]
            allowed = torch.ones(total, total, dtype=torch.bool, device=x.device).tril()
            allowed[:, :num_queries] = True  # everyone sees the queries
            allowed[:num_queries, num_queries:] = False  # queries never see the text
            self_mask = self_mask & allowed[None, None]
        self_mask = additive_mask(self_mask, x.dtype)
        cross_mask = additive_mask(atom_mask[:, None, None, :], x.dtype) if atoms is not None else None
        for layer in self.bert.encoder.layer:
            x = layer(x, self_mask, num_queries, atoms, cross_mask)
        return x

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Captioning head: (B, T, H) -> (B, T, vocab)."""
        p = self.cls.predictions
        h = p.transform.LayerNorm(F.gelu(p.transform.dense(hidden)))
        return F.linear(h, self.bert.embeddings.word_embeddings.weight, p.bias)

    def load_bert(self, path: str | Path) -> list[str]:
        """Initialise from a Hugging Face BERT folder; returns the keys left at their random init.

        Query FFNs start as copies of the text FFNs (as in BLIP-2); BERT's token-type-0 embedding is
        folded into the position embeddings (the Q-Former has no token types); extra vocabulary rows
        (the [DEC] token) keep their init.
        """
        state = _read_bert_state(Path(path))
        own = self.state_dict()
        if "embeddings.token_type_embeddings.weight" in state:
            tt = state.pop("embeddings.token_type_embeddings.weight")[0]
            state["embeddings.position_embeddings.weight"] = state["embeddings.position_embeddings.weight"] + tt
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            name = key if key.startswith("cls.") else f"bert.{key}"
            if name == "cls.predictions.decoder.weight" or name not in own:
                continue
            if name == "bert.embeddings.word_embeddings.weight" or name == "cls.predictions.bias":
                value = torch.cat([value, own[name][value.shape[0] :]], dim=0)
            if own[name].shape != value.shape:
                raise ValueError(
                    f"BERT weight {key} has shape {tuple(value.shape)}, Q-Former expects {tuple(own[name].shape)}"
                )
            mapped[name] = value
            if "intermediate." in name or (".output." in name and "attention" not in name):
                qname = name.replace("intermediate.", "intermediate_query.").replace(".output.", ".output_query.")
                if qname in own:
                    mapped[qname] = value.clone()
        self.load_state_dict(mapped, strict=False)
        return sorted(set(own) - set(mapped))


def _read_bert_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = resolve_asset(str(folder))
    if (folder / "model.safetensors").exists():
        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in BERT folder {folder}")
    return {k.removeprefix("bert."): v.float() for k, v in state.items() if not k.endswith("position_ids")}
