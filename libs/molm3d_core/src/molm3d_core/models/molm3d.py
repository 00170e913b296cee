"""3D-MoLM: Uni-Mol encoder -> Q-Former -> projector -> causal LM with LoRA.

Retrieval (stage 1) uses the Q-Former's projections: a molecule is Q normalised vectors (one per query
token), a text one normalised vector of its [CLS] state, and their similarity is the max over the
queries. Generation (stages 2-3) projects the query outputs into the LM's embedding space and splices
them in at the prompt's `<mol>` placeholders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..assets import resolve_asset
from ..prompts import CAPTION_INSTRUCTION, build_prompt
from .encoder3d import UniMolConfig, UniMolEncoder
from .heads import PropertyHead, PropertyHeadConfig, QueryPropertyHead
from .lm import DecodingOptions, Generation, LMConfig, MolLM, lm_hidden_size
from .qformer import QFormer, QFormerConfig

DEC_TOKEN = "[DEC]"  # BLIP-2's decoder start token for the Q-Former's captioning loss
PRESETS = ("tiny", "small", "official")


@dataclass
class MoLM3DConfig:
    preset: str = "small"
    encoder: UniMolConfig = field(default_factory=UniMolConfig.small)
    qformer: QFormerConfig = field(default_factory=QFormerConfig.small)
    lm: LMConfig = field(default_factory=LMConfig)
    # Property heads on the encoder (what `molm3d predict` answers with) and on the queries.
    property_head: PropertyHeadConfig = field(default_factory=PropertyHeadConfig)
    embed_dim: int = 256  # retrieval projection size
    max_text_tokens: int = 128  # Q-Former text length, in training and in retrieval alike
    temperature: float = 0.1  # contrastive temperature
    prompt_template: str = "compact"
    max_smiles_chars: int = 96
    max_atoms: int = 256  # featurisation cap (a seeded subset above it)
    molecule_tokens: bool = True  # False: the SMILES-only baseline, prompts carry no <mol> tokens
    seed: int = 0  # initialisation seed

    def __post_init__(self) -> None:
        if self.qformer.encoder_width != self.encoder.embed_dim:
            raise ValueError(
                f"qformer.encoder_width ({self.qformer.encoder_width}) must equal "
                f"encoder.embed_dim ({self.encoder.embed_dim})"
            )

    @classmethod
    def preset_config(cls, name: str, **lm_overrides: Any) -> MoLM3DConfig:
        if name == "tiny":
            tiny_lm = {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                # Wider than Llama's 0.02, so that logits of a frozen random LM can move under LoRA.
                "initializer_range": 0.2,
            }
            return cls(
                preset="tiny",
                encoder=UniMolConfig.tiny(),
                qformer=QFormerConfig.tiny(),
                lm=LMConfig(random_init=tiny_lm, **lm_overrides),
                property_head=PropertyHeadConfig(hidden_size=32),
                embed_dim=16,
                max_text_tokens=32,
            )
        if name == "small":
            return cls(preset="small", lm=LMConfig(**lm_overrides))
        if name == "official":
            # Paper scale: Uni-Mol 15x512, SciBERT Q-Former, Llama-2-7B; give `lm_overrides["base"]`.
            return cls(
                preset="official",
                encoder=UniMolConfig.official(),
                qformer=QFormerConfig.official(),
                lm=LMConfig(lora_dropout=0.1, **lm_overrides),
                prompt_template="reference",
            )
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoLM3DConfig:
        lm = dict(d["lm"])
        lm["lora_targets"] = tuple(lm["lora_targets"])
        parts = ("encoder", "qformer", "lm", "property_head")
        return cls(
            **{k: v for k, v in d.items() if k not in parts},
            encoder=UniMolConfig(**d["encoder"]),
            qformer=QFormerConfig(**d["qformer"]),
            lm=LMConfig(**lm),
            # Checkpoints from before the heads existed have none.
            property_head=PropertyHeadConfig(**d.get("property_head", {"targets": ()})),
        )


WORD_EMBEDDINGS = "qformer.bert.embeddings.word_embeddings.weight"
NEW_TEXT_ROWS = "qformer.new_word_embeddings"  # checkpoint key: the added rows only ([DEC])


class MoLM3D(nn.Module):
    def __init__(
        self,
        config: MoLM3DConfig,
        dtype: torch.dtype = torch.float32,
        meta: bool = False,
        init_bert: bool = True,
        with_lm: bool = True,
        with_molecule: bool = True,
    ) -> None:
        """Build the model; `init_bert` loads the Q-Former's BERT weights when their shapes fit
        (skip it when a checkpoint will overwrite them anyway). `meta` builds shapes only.
        `with_lm=False` leaves the language model out (`self.lm` is None): the encoder service
        needs the molecule side only and should not hold the LM's weights. `with_molecule=False`
        leaves the molecule side out (encoder, Q-Former, contrastive and matching heads are None;
        `llm_proj` stays): the LM service decodes from molecule tokens projected elsewhere."""
        super().__init__()
        from transformers import AutoTokenizer

        self.config = config
        self.with_molecule = with_molecule
        torch.manual_seed(config.seed)
        device = torch.device("meta") if meta else torch.device("cpu")
        hq = config.qformer.hidden_size
        if with_molecule:
            with device:
                self.encoder = UniMolEncoder(config.encoder)
                self.ln_graph = nn.LayerNorm(config.encoder.embed_dim)
                self.qformer = QFormer(config.qformer)
                self.graph_proj = nn.Linear(hq, config.embed_dim)
                self.text_proj = nn.Linear(hq, config.embed_dim)
                self.gtm_head = nn.Linear(hq, 2)
        else:
            self.encoder = self.ln_graph = self.qformer = self.graph_proj = self.text_proj = self.gtm_head = None
        self.property_head: PropertyHead | None = None
        self.query_property_head: QueryPropertyHead | None = None
        if with_molecule and config.property_head.targets:
            # Seeded on their own, so that adding heads leaves every other module's init unchanged.
            torch.manual_seed(config.seed + 2)
            with device:
                self.property_head = PropertyHead(config.property_head, config.encoder.embed_dim)
                self.query_property_head = QueryPropertyHead(config.property_head, config.qformer.num_query_tokens, hq)
        # Without the LM only its hidden size is read: even a meta LM imports peft and loads the LM
        # tokenizer (measured: the encoder replica's model load took 115 MiB less without them).
        lm = MolLM(config.lm, dtype=dtype, meta=meta) if with_lm else None
        # Re-seed: building the LM may draw random numbers (random_init) or not (meta, with_lm=False),
        # and the projector must come out the same either way.
        torch.manual_seed(config.seed + 1)
        with device:
            self.llm_proj = nn.Linear(hq, lm.hidden_size if lm is not None else lm_hidden_size(config.lm))
        self.lm: MolLM | None = lm  # registered after llm_proj: parameter order is kept in optimizer states

        self.text_tokenizer = None
        self.bert_fits = False  # the BERT's weights fit (and initialise) this Q-Former
        if config.qformer.bert_path is not None and with_molecule:
            self.text_tokenizer = AutoTokenizer.from_pretrained(resolve_asset(config.qformer.bert_path))
            self.text_tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
            if len(self.text_tokenizer) != config.qformer.vocab_size:
                raise ValueError(
                    f"Q-Former vocab_size {config.qformer.vocab_size} != tokenizer size {len(self.text_tokenizer)} "
                    f"(BERT vocabulary + {DEC_TOKEN})"
                )
            self.bert_fits = config.qformer.hidden_size == _bert_hidden_size(config.qformer.bert_path)
            if init_bert and self.bert_fits and not meta:
                self.qformer.load_bert(resolve_asset(config.qformer.bert_path))

    @property
    def device(self) -> torch.device:
        return self.llm_proj.weight.device

    @property
    def num_query_tokens(self) -> int:
        return self.config.qformer.num_query_tokens

    # 1. molecules -> query outputs ------------------------------------------------------------------

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collated features -> the encoder's atom states (B, L, D), padding mask (B, L) True at padding."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.encoder(batch["src_tokens"], batch["src_distance"], batch["src_edge_type"])

    def encode_atoms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collated features -> atom states (B, L, D) after ln_graph, attend mask (B, L) True = atom."""
        atoms, padding_mask = self.encode(batch)
        return self.ln_graph(atoms), ~padding_mask

    def predict_properties(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoder's property heads: target name -> (B,) values in the target's unit (float64)."""
        if self.property_head is None:
            raise ValueError("this checkpoint has no property heads (it predates them, or was trained without)")
        atoms, padding_mask = self.encode(batch)
        values = self.property_head.to_units(self.property_head(atoms, padding_mask))
        return {name: values[:, j] for j, name in enumerate(self.property_head.targets)}

    def query_molecules(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Q, Hq): the query tokens after cross-attending to the atoms."""
        atoms, atom_mask = self.encode_atoms(batch)
        return self.qformer(atoms.to(self.qformer.query_tokens.dtype), atom_mask)[:, : self.num_query_tokens]

    def molecule_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Q, H_lm): what replaces the `<mol>` placeholders."""
        return self.llm_proj(self.query_molecules(batch))

    def encode_molecules(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`molecule_tokens` (B, Q, H_lm) and `embed_molecules` (B, Q, E) from one encoder + Q-Former pass
        (what the encoder stage serves)."""
        queries = self.query_molecules(batch)
        return self.llm_proj(queries), self._retrieval_embeddings(queries)

    # 2. retrieval -----------------------------------------------------------------------------------

    def embed_molecules(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Q, E) unit vectors."""
        return self._retrieval_embeddings(self.query_molecules(batch))

    def _retrieval_embeddings(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, Q, Hq) query outputs -> (B, Q, E) unit vectors."""
        return F.normalize(self.graph_proj(queries), dim=-1)

    def tokenize_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Q-Former text ids, cut at `config.max_text_tokens` (the same length in training and retrieval)."""
        if self.text_tokenizer is None:
            raise ValueError("this model has no Q-Former tokenizer (qformer.bert_path is None)")
        enc = self.text_tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_text_tokens, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, E) unit vectors of the texts' [CLS] states."""
        enc = self.tokenize_texts(texts)
        hidden = self.qformer(None, None, enc["input_ids"], enc["attention_mask"], use_queries=False)
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1)

    @staticmethod
    def similarity(mol_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B, Q, E) x (C, E) -> (B, C): the best-matching query token per pair."""
        return torch.einsum("bqe,ce->bcq", mol_embeds, text_embeds).amax(-1)

    def match_logits(self, batch: dict[str, torch.Tensor], texts: list[str]) -> torch.Tensor:
        """Matching head on (molecule i, text i) pairs: (B,) logit of "matches"."""
        atoms, atom_mask = self.encode_atoms(batch)
        enc = self.tokenize_texts(texts)
        hidden = self.qformer(atoms, atom_mask, enc["input_ids"], enc["attention_mask"])
        logits = self.gtm_head(hidden[:, : self.num_query_tokens]).mean(1)  # (B, 2)
        return logits[:, 1] - logits[:, 0]

    # 3. generation ----------------------------------------------------------------------------------

    def prompt(
        self,
        instruction: str,
        smiles: str | Sequence[str],
        *,
        history: Sequence[tuple[str, str]] = (),
        system: str = "",
    ) -> str:
        """This model's prompt (`build_prompt` with its template, query tokens and SMILES limit): one
        molecule's SMILES or a list of 0, 1 or more, earlier (question, answer) turns, a system line.
        The LM then takes molecule tokens of shape (n_molecules, Q, H), in the list's order. ValueError
        for user text holding `<mol>` or another of the tokenizer's special tokens."""
        c = self.config
        n_mol = self.num_query_tokens if c.molecule_tokens else 0
        reserved = self.lm.tokenizer.all_special_tokens if self.lm is not None else ()
        return build_prompt(
            c.prompt_template,
            instruction,
            smiles,
            n_mol,
            c.max_smiles_chars,
            history=history,
            system=system,
            reserved=reserved,
        )

    def generate(
        self,
        batch: dict[str, torch.Tensor],
        smiles: list[str],
        instructions: list[str],
        decoding: DecodingOptions,
    ) -> list[Generation]:
        prompts = [self.prompt(i, s) for i, s in zip(instructions, smiles, strict=True)]
        mol = self.molecule_tokens(batch) if self.config.molecule_tokens else None
        return self.lm.generate(prompts, mol, decoding)

    def caption(self, batch: dict[str, torch.Tensor], smiles: list[str], decoding: DecodingOptions) -> list[Generation]:
        return self.generate(batch, smiles, [CAPTION_INSTRUCTION] * len(smiles), decoding)

    def ask(
        self,
        batch: dict[str, torch.Tensor],
        smiles: list[str],
        questions: list[str],
        decoding: DecodingOptions,
    ) -> list[Generation]:
        return self.generate(batch, smiles, questions, decoding)

    # 4. what a checkpoint saves ---------------------------------------------------------------------

    @property
    def pretrained_text_rows(self) -> int:
        """Leading Q-Former word-embedding rows that stay as loaded from the BERT (0: all train)."""
        if self.config.qformer.train_word_embeddings or self.text_tokenizer is None or not self.bert_fits:
            return 0
        return self.text_tokenizer.vocab_size  # the BERT vocabulary, without added tokens ([DEC])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the base LM's weights, which checkpoints reference by name (and the
        pretrained Q-Former vocabulary rows, when they are kept frozen: see QFormerConfig)."""
        if not self.with_molecule:
            raise ValueError("a model built with with_molecule=False holds no molecule side: it cannot be saved")
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}
        if self.pretrained_text_rows:
            state[NEW_TEXT_ROWS] = state.pop(WORD_EMBEDDINGS)[self.pretrained_text_rows :].clone()
        if self.lm is not None:
            state.update({f"lm.{k}": v for k, v in self.lm.trainable_state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("lm.") and k != NEW_TEXT_ROWS}
        if not self.with_molecule:  # only the projector into the LM is held
            own = {k: v for k, v in own.items() if k.startswith("llm_proj.")}
        # Pretrained vocabulary rows come from the BERT (load with init_bert=True).
        if NEW_TEXT_ROWS in state and self.with_molecule:
            rows = self.pretrained_text_rows
            if not rows:
                raise ValueError(f"checkpoint stores only {NEW_TEXT_ROWS} but the Q-Former has no frozen BERT rows")
            with torch.no_grad():
                self.qformer.bert.embeddings.word_embeddings.weight[rows:] = state[NEW_TEXT_ROWS]
        result = self.load_state_dict(own, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("lm.")]
        if NEW_TEXT_ROWS in state:
            missing = [k for k in missing if k != WORD_EMBEDDINGS]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        if self.lm is not None:
            self.lm.load_trainable_state_dict(
                {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
            )


def _bert_hidden_size(ref: str) -> int | None:
    import json

    cfg = resolve_asset(ref) / "config.json"
    return json.loads(cfg.read_text()).get("hidden_size") if cfg.exists() else None
