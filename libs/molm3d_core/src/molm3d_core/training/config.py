"""Training configuration: one dataclass, named presets, TOML files for overrides.

`molm3d train STAGE --config small` uses the preset; `--config my.toml` starts from the preset named
in the file (`preset = "small"`) and overrides any field given there.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = (0, 1, 2, 3)


@dataclass
class TrainConfig:
    preset: str = "small"  # model architecture preset (MoLM3DConfig.preset_config)
    data_dir: str = "data/molm3d"  # output of `molm3d data build`
    output_dir: str = "runs/small"  # stage N writes {output_dir}/stage{N}/
    init_checkpoint: str | None = None  # start from these weights; default: the previous stage's final
    steps: int = 1000  # optimizer steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    # Linear warm-up; None = 5 % of the steps (Uni-Mol warms up over 1 % of 1M steps; 20-50 steps
    # were too few for stage 0's Adam statistics).
    warmup_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    autocast: str = "auto"  # "auto" (bf16 on GPU and on CPUs with native bf16), "bf16" or "none"
    log_every: int = 10
    save_every: int = 100  # resumable state every N steps
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    # stage 0: supervised 3D pretraining (property heads) + Uni-Mol's denoising as an auxiliary
    target_weights: dict[str, float] = field(default_factory=lambda: {"homo": 3.0, "lumo": 3.0, "gap": 3.0})
    denoise_fraction: float = 0.25  # share of each batch also sent corrupted through Uni-Mol's losses
    denoise_weight: float = 0.1  # weight of Uni-Mol's loss (its own 1 / 5 / 10 / 0.01 / 0.01 inside)
    mask_prob: float = 0.15
    coord_noise: float = 1.0  # Å, uniform noise on masked atoms
    # stage 1: Q-Former (the text length is the model's `max_text_tokens`)
    property_batch_size: int = 32  # molecules per step for the query property head (0: off)
    property_weight: float = 1.0
    # stages 2-3
    max_target_tokens: int = 96
    # True: the Q-Former stays as stage 1 left it and only the projector and LoRA train (the molecule
    # tokens keep what stage 1 taught them; they ran to a near-constant when trained by the LM loss).
    freeze_qformer: bool = True
    etkdg_prob: float = 0.5  # QM9: chance of training on the generated conformer instead of DFT
    task_exponent: float = 0.25  # stage 3 samples task t with p ~ weight_t * N_t ** exponent
    task_weights: dict[str, float] = field(default_factory=dict)
    molecule_tokens: bool = True  # False: the SMILES-only baseline (no <mol> tokens in the prompt)
    tasks: tuple[str, ...] = ()  # stage 3 task subset (empty: all)
    max_train_molecules: int | None = None  # cap for quick runs

    @classmethod
    def preset_config(cls, name: str) -> TrainConfig:
        if name == "tiny":
            return cls(preset="tiny", output_dir="runs/tiny", steps=4, batch_size=4, lr=1e-3, warmup_steps=0,
                       log_every=1, save_every=2, max_target_tokens=32, property_batch_size=4)  # fmt: skip
        if name == "small":
            return cls()
        if name == "official":
            return cls(preset="official", output_dir="runs/official", batch_size=16, grad_accum=4, lr=1e-4)
        raise ValueError(f"unknown training preset {name!r}; choose tiny, small or official")

    @classmethod
    def load(cls, ref: str) -> TrainConfig:
        """A preset name or a TOML file (its `preset` key picks the base, other keys override)."""
        path = Path(ref)
        if path.suffix != ".toml":
            return cls.preset_config(ref)
        if not path.exists():
            raise FileNotFoundError(f"training config {path} does not exist")
        values = tomllib.loads(path.read_text())
        return cls.preset_config(values.pop("preset", "small")).replace(**values)

    def replace(self, **overrides: Any) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        if "tasks" in overrides:
            overrides["tasks"] = tuple(overrides["tasks"])
        return dataclasses.replace(self, **overrides)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def stage_dir(self, stage: int) -> Path:
        return Path(self.output_dir) / f"stage{stage}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StageResult:
    stage: int
    steps: int
    final_checkpoint: Path
    losses: list[float] = field(default_factory=list)
