"""Our checkpoint format: one folder, `config.json` + `model.safetensors`.

The safetensors file holds the trained weights only (encoder, Q-Former, heads, projector, LoRA and the
embedding rows of added tokens); the base LM is referenced by name/path in the config. Nothing is ever
unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..device import resolve_device, resolve_dtype
from ..models.molm3d import MoLM3D, MoLM3DConfig

log = logging.getLogger(__name__)

FORMAT = "molm3d-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_CHECKPOINT_NAME = "molm3d-small"


@dataclass
class CheckpointInfo:
    """What a loaded model is, for provenance in every output."""

    model_id: str
    trained: bool
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str | None = None  # when the checkpoint was written (ISO 8601, UTC)


def save_checkpoint(
    model: MoLM3D,
    folder: str | Path,
    model_id: str,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the folder atomically (temp names, then rename), optionally casting floats to `dtype`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config = {
        "format": FORMAT,
        "model_id": model_id,
        "trained": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": model.config.to_dict(),
        "metadata": metadata or {},
    }
    tmp_weights, tmp_config = folder / f".{WEIGHTS_FILE}.tmp", folder / f".{CONFIG_FILE}.tmp"
    save_file(state, str(tmp_weights), metadata={"format": FORMAT, "model_id": model_id})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, folder / WEIGHTS_FILE)
    os.replace(tmp_config, folder / CONFIG_FILE)
    return folder


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a molm3d checkpoint (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def default_checkpoint() -> Path | None:
    """$MOLM3D_CHECKPOINT, else the repository's models/molm3d-small when present, else None."""
    env = os.environ.get("MOLM3D_CHECKPOINT")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "models" / DEFAULT_CHECKPOINT_NAME
        if (candidate / CONFIG_FILE).exists():
            return candidate
    return None


def load_model(
    checkpoint: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    preset: str = "small",
    with_lm: bool = True,
    with_molecule: bool = True,
) -> tuple[MoLM3D, CheckpointInfo]:
    """A ready-to-use model in eval mode (`with_lm=False`: the molecule side only, no LM weights;
    `with_molecule=False`: the LM and its input projector only, no encoder or Q-Former weights).

    Without a checkpoint (none given and no default found) this is the `preset` architecture with
    untrained encoder/projector weights, seeded: outputs are deterministic but not meaningful, and
    `CheckpointInfo.trained` says so.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if path is None:
        log.info("no trained checkpoint found: using an UNTRAINED %s model (projector and encoder random)", preset)
        model = MoLM3D(MoLM3DConfig.preset_config(preset), dtype=torch_dtype, with_lm=with_lm,
                       with_molecule=with_molecule)  # fmt: skip
        info = CheckpointInfo(model_id=f"molm3d-{preset}-untrained", trained=False)
    else:
        config = read_checkpoint_config(path)
        model_config = MoLM3DConfig.from_dict(config["config"])
        # The BERT weights are needed when the checkpoint references its vocabulary rows.
        init_bert = not model_config.qformer.train_word_embeddings
        model = MoLM3D(model_config, dtype=torch_dtype, init_bert=init_bert, with_lm=with_lm,
                       with_molecule=with_molecule)  # fmt: skip
        model.load_trainable_state_dict(load_file(str(path / WEIGHTS_FILE)))
        info = CheckpointInfo(
            model_id=config["model_id"],
            trained=bool(config.get("trained", True)),
            path=str(path),
            metadata=config.get("metadata", {}),
            created=config.get("created"),
        )
    model.to(device=dev, dtype=torch_dtype).eval()
    return model, info
