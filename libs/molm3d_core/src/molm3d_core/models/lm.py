"""Causal LM with LoRA that reads molecule tokens spliced in at `<mol>` placeholders.

Any Hugging Face Llama-family model works; the default is the packaged SmolLM2-135M-Instruct.
Molecule tokens enter the way multimodal models merge image tokens: the prompt holds one `<mol>` id
per query token, and the projected Q-Former outputs overwrite exactly those embedding positions.
A count mismatch is an error, never silent padding or truncation.

Batches are left-padded and targets end with EOS, so a molecule's answer does not depend on its batch
neighbours and generation stops by itself (reference defects 2 and 3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..assets import DEFAULT_LM, resolve_asset
from ..decoding import DecodingOptions, cut_at_stop
from ..prompts import MOL_TOKEN
from .continuous import Sequence, decode_all

__all__ = ["DecodingOptions", "Generation", "LMConfig", "MolLM"]

# transformers warns that the penalties see generated tokens only: by design, the prompt goes in as
# embeddings (and its SMILES should not penalise the answer).
warnings.filterwarnings("ignore", message=r"Passing `\w+` with `inputs_embeds`", category=UserWarning)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LMConfig:
    base: str = DEFAULT_LM  # folder or packaged:NAME; referenced by checkpoints, never copied into them
    lora_r: int = 8
    lora_alpha: int = 32
    # The reference uses 0.1; on CPU dropout alone costs ~40% of a training step (REFERENCE.md s3).
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # A random-init model of the base's tokenizer with these LlamaConfig overrides (tests, the
    # `official` preset's meta-device build). None = load the base's weights.
    random_init: dict[str, Any] | None = None


@dataclass
class Generation:
    text: str
    num_tokens: int  # generated tokens, EOS included
    # "eos" (the model stopped), "length" (max_new_tokens reached), "stop" (a stop string: the text ends
    # before it) or "cancelled" (the caller gave up)
    finish_reason: str


@dataclass
class TokenizedPrompts:
    input_ids: torch.Tensor  # (B, T), left-padded
    attention_mask: torch.Tensor  # (B, T), 1 = real token
    labels: torch.Tensor | None = None  # (B, T), -100 outside the targets


def lm_hidden_size(config: LMConfig) -> int:
    """The LM's hidden size, read from its config without building it."""
    from transformers import AutoConfig

    overrides = config.random_init or {}
    return int(overrides.get("hidden_size") or AutoConfig.from_pretrained(resolve_asset(config.base)).hidden_size)


class MolLM(nn.Module):
    def __init__(self, config: LMConfig, dtype: torch.dtype = torch.float32, meta: bool = False) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.config = config
        path = resolve_asset(config.base)
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.base_vocab_size = len(self.tokenizer)
        self.tokenizer.add_special_tokens({"additional_special_tokens": [MOL_TOKEN]})
        if self.tokenizer.pad_token is None:
            self.tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        self.mol_token_id = self.tokenizer.convert_tokens_to_ids(MOL_TOKEN)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {config.base} has no EOS token; EOS-terminated targets need one")

        if config.random_init is not None or meta:
            lm_config = AutoConfig.from_pretrained(path)
            for key, value in (config.random_init or {}).items():
                setattr(lm_config, key, value)
            with torch.device("meta") if meta else torch.device("cpu"):
                torch.manual_seed(0)
                base = AutoModelForCausalLM.from_config(lm_config, dtype=dtype)
        else:
            base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        # New rows (<mol>, maybe [PAD]) start at the mean embedding: deterministic, and saved in our
        # checkpoints (the reference's were random and lost: defect 4).
        base.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        if not meta:
            with torch.no_grad():
                emb = base.get_input_embeddings().weight
                emb[self.base_vocab_size :] = emb[: self.base_vocab_size].mean(0, keepdim=True)
        for p in base.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets),
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    # 1. tokenisation ---------------------------------------------------------------------------------

    def tokenize(
        self, prompts: list[str], targets: list[str] | None = None, max_target_tokens: int | None = None
    ) -> TokenizedPrompts:
        """Left-padded prompts (for generation); with targets, right-padded `prompt + target + EOS` rows
        with labels on the target only (for training).

        Training rows are padded on the right so that every query position sees at least one real
        key: left padding leaves the pad rows fully masked, and SDPA's bf16 backward on CUDA turns
        those rows into NaN gradients (measured on an H200; eager attention and fp32 were unaffected).
        `max_target_tokens` truncates long targets (EOS still ends them, so the model learns to stop).
        """
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if targets is None:
            seqs, labels = prompt_ids, None
        else:
            limit = max_target_tokens - 1 if max_target_tokens else None
            target_ids = [[*tok(t, add_special_tokens=False)["input_ids"][:limit], tok.eos_token_id] for t in targets]
            seqs = [p + t for p, t in zip(prompt_ids, target_ids, strict=True)]
            labels = [[-100] * len(p) + t for p, t in zip(prompt_ids, target_ids, strict=True)]
        width = max(len(s) for s in seqs)
        left = labels is None

        def pad(rows: list[list[int]], value: int) -> torch.Tensor:
            fill = [[value] * (width - len(r)) for r in rows]
            return torch.tensor([f + r if left else r + f for f, r in zip(fill, rows, strict=True)], dtype=torch.long)

        return TokenizedPrompts(
            input_ids=pad(seqs, tok.pad_token_id),
            attention_mask=pad([[1] * len(s) for s in seqs], 0),
            labels=pad(labels, -100) if labels is not None else None,
        )

    # 2. splicing -------------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, mol_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with `<mol>` positions overwritten by mol_embeds (B_mol, Q, H) in order:
        B_mol counts molecules, not prompts (a prompt may hold 0, 1 or more); None for none."""
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, H)
        placeholder = input_ids.eq(self.mol_token_id)
        n_slots = int(placeholder.sum())
        n_given = 0 if mol_embeds is None else mol_embeds.shape[0] * mol_embeds.shape[1]
        if n_slots != n_given:
            raise ValueError(
                f"prompt has {n_slots} {MOL_TOKEN} placeholders but {n_given} molecule embeddings were given "
                f"({None if mol_embeds is None else tuple(mol_embeds.shape)}); they must match exactly"
            )
        if n_slots:
            embeds = embeds.masked_scatter(placeholder.unsqueeze(-1), mol_embeds.to(embeds.dtype))
        return embeds

    # 3. training loss and generation -----------------------------------------------------------------

    def loss(self, batch: TokenizedPrompts, mol_embeds: torch.Tensor | None) -> torch.Tensor:
        """Mean token cross-entropy over the targets (EOS included)."""
        device = self.model.device
        ids, mask, labels = (t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.labels))
        embeds = self.embed(ids, mol_embeds)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Logits only from the first labelled position on: saves the vocab projection for the prompts.
        first = int((labels != -100).float().argmax(-1).min())
        keep = ids.shape[1] - first + 1
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep)
        logits = out.logits[:, :-1].float()  # predicts positions first..T-1
        target = labels[:, ids.shape[1] - keep + 1 :]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def prompt_embeds(self, prompts: list[str], mol_embeds: torch.Tensor | None) -> list[torch.Tensor]:
        """Each prompt's embeddings (T_i, H), molecule tokens spliced in, without padding. mol_embeds
        (n_molecules, Q, H): every prompt's molecules, in order (None when there are none)."""
        batch = self.tokenize(prompts)
        device = self.model.device
        embeds = self.embed(batch.input_ids.to(device), mol_embeds)
        mask = batch.attention_mask.to(device).bool()
        return [embeds[i, mask[i]] for i in range(len(prompts))]

    def answer_text(self, ids: list[int]) -> str:
        """Generated token ids as the answer reads: special tokens skipped, leading whitespace stripped.
        Stop strings are matched in this text."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def generation(self, seq: Sequence) -> Generation:
        """The text of a decoded sequence, up to its EOS and before its first stop string, stripped."""
        eos = self.tokenizer.eos_token_id
        ids = seq.tokens[: seq.tokens.index(eos) + 1] if eos in seq.tokens else seq.tokens
        text = self.answer_text(ids)
        reason = "eos" if eos in ids else (seq.finish_reason or "length")
        if seq.decoding.stop and (cut := cut_at_stop(text, seq.decoding.stop)) is not None:
            text, reason = cut, "stop"
        return Generation(text.strip(), len(ids), reason)

    @torch.no_grad()
    def generate(
        self, prompts: list[str], mol_embeds: torch.Tensor | None, decoding: DecodingOptions
    ) -> list[Generation]:
        """Decode every prompt. Greedy and sampling run as one continuous batch (`continuous.py`, the path
        the LM stage serves); beam search through transformers' `generate` on a left-padded batch.

        Beam search knows no stop strings: they apply after the fact (the text ends before the first
        one, finish_reason "stop", num_tokens counts every token the beams generated)."""
        if decoding.num_beams == 1:
            return decode_all(self, [Sequence(e, decoding) for e in self.prompt_embeds(prompts, mol_embeds)])
        batch = self.tokenize(prompts)
        device = self.model.device
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        embeds = self.embed(ids, mol_embeds)
        eos = self.tokenizer.eos_token_id
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=decoding.max_new_tokens,
            num_beams=decoding.num_beams,
            repetition_penalty=decoding.repetition_penalty,
            length_penalty=decoding.length_penalty,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            suppress_tokens=[self.mol_token_id],
        )
        # only new tokens: the prompt went in as embeddings
        return [self.generation(Sequence(embeds[0], decoding, tokens=row)) for row in out.tolist()]

    # 4. what a checkpoint saves ----------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights and the embedding rows of added tokens; the base stays referenced by name."""
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.model, save_embedding_layers=False).items()}
        state["new_token_embeddings"] = self.model.get_input_embeddings().weight[self.base_vocab_size :]
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        rows = state["new_token_embeddings"]
        emb = self.model.get_input_embeddings().weight
        expected = tuple(emb[self.base_vocab_size :].shape)
        if tuple(rows.shape) != expected:
            raise ValueError(f"checkpoint has {tuple(rows.shape)} new-token rows, model expects {expected}")
        with torch.no_grad():
            emb[self.base_vocab_size :] = rows.to(emb.dtype)
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(self.model, lora)
        if result.unexpected_keys:
            raise ValueError(f"unexpected LoRA keys in checkpoint: {result.unexpected_keys[:5]}")
