"""One training loop for every stage: resumable, seeded, gradient accumulation, bf16 autocast where the hardware has it.

Layout of `{output_dir}/stage{N}/`:
- `last/`: the resumable state (trainable weights as safetensors, optimizer state, step), replaced
  atomically every `save_every` steps, so a killed run resumes from its last save;
- `final/`: a normal molm3d checkpoint once the stage finishes (the next stage starts from it);
- `metrics.jsonl`: one line per logged step (loss parts, lr, samples/s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..checkpoints import load_model, save_checkpoint
from ..device import resolve_autocast, resolve_device
from ..models import MoLM3D, MoLM3DConfig
from .config import StageResult, TrainConfig
from .data import TrainingData
from .objectives import build_objective

log = logging.getLogger(__name__)
MAX_NONFINITE_STREAK = 5  # consecutive skipped updates before a stage stops with an error


def build_model(cfg: TrainConfig, stage: int) -> MoLM3D:
    """Weights to start from: the given checkpoint, else the previous stage's final, else a fresh preset."""
    init = Path(cfg.init_checkpoint) if cfg.init_checkpoint else None
    if init is None and stage > 0 and (cfg.stage_dir(stage - 1) / "final").exists():
        init = cfg.stage_dir(stage - 1) / "final"
    if init is not None:
        log.info("stage %d starts from %s", stage, init)
        model, _ = load_model(init, device=cfg.device, dtype="float32")
    else:
        model = MoLM3D(MoLM3DConfig.preset_config(cfg.preset)).to(resolve_device(cfg.device))
    if not cfg.molecule_tokens:
        model.config.molecule_tokens = False
    return model


def decayed_parameters(modules: list[torch.nn.Module]) -> set[int]:
    """Ids of the parameters weight decay applies to: the weights of Linear layers (LoRA's included).

    Embedding tables (atom types, the Gaussian basis' per-edge-type affine terms, vocabulary rows),
    LayerNorms, biases and query tokens are left alone: decay would pull rare atom types and edge
    types towards zero for no reason but their rarity.
    """
    return {id(m.weight) for module in modules for m in module.modules() if isinstance(m, torch.nn.Linear)}


def train_mode(model: torch.nn.Module, trainable: set[int]) -> None:
    """Train mode for modules that hold trainable parameters, eval mode for wholly frozen ones.

    A frozen encoder left in train mode keeps its dropout on: it would feed the modules after it
    noisy features in training (measured: noise 0.67x the spread between molecules) and clean ones
    at inference. The reference keeps frozen modules in eval mode too.
    """
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(id(p) in trainable for p in params):
            module.eval()


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_state(
    stage_dir: Path, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, step: int,
    cfg: TrainConfig,
) -> None:  # fmt: skip
    tmp = stage_dir / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({name: p.detach().cpu().contiguous() for name, p in params}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}, indent=2))
    old = stage_dir / "last.old"
    if (stage_dir / "last").exists():
        os.replace(stage_dir / "last", old)
    os.replace(tmp, stage_dir / "last")
    shutil.rmtree(old, ignore_errors=True)


def _resume(stage_dir: Path, params, optimizer: torch.optim.Optimizer) -> int:
    last = stage_dir / "last"
    if not (last / "state.json").exists():
        return 0
    weights = load_file(str(last / "weights.safetensors"))
    names = [n for n, _ in params]
    if sorted(weights) != sorted(names):
        raise ValueError(f"{last} does not match this stage's trainable parameters; remove it to start over")
    with torch.no_grad():
        for name, p in params:
            p.copy_(weights[name])
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True))
    step = json.loads((last / "state.json").read_text())["step"]
    log.info("resuming %s at step %d", stage_dir, step)
    return step


def train_stage(stage: int, cfg: TrainConfig, progress: bool = True, model: MoLM3D | None = None) -> StageResult:
    """Train one stage; `model` starts from these weights instead of `build_model` (benchmarks build
    random-weight models from tokenizer-only folders)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    stage_dir = cfg.stage_dir(stage)
    stage_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, stage) if model is None else model.to(resolve_device(cfg.device))
    data = TrainingData.load(cfg.data_dir, "train", cfg.max_train_molecules, examples=stage > 0)
    objective = build_objective(stage, model, cfg, data)

    params = objective.trainable()
    wanted = {id(p) for _, p in params}
    for p in [*model.parameters(), *(q for m in objective.extra_modules().values() for q in m.parameters())]:
        p.requires_grad_(id(p) in wanted)

    decay_ids = decayed_parameters([model, *objective.extra_modules().values()])
    decay = [p for _, p in params if id(p) in decay_ids]
    no_decay = [p for _, p in params if id(p) not in decay_ids]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    start = _resume(stage_dir, params, optimizer)
    for m in (model, *objective.extra_modules().values()):
        train_mode(m, wanted)
    device = model.device
    use_autocast = resolve_autocast(cfg.autocast, device)

    losses: list[float] = []
    metrics_file = (stage_dir / "metrics.jsonl").open("a")
    bar = tqdm(total=cfg.steps, initial=start, desc=f"stage {stage}", unit="step", file=sys.stderr,
               disable=not progress)  # fmt: skip
    t0, samples = time.perf_counter(), 0
    bad_streak, skipped = 0, 0
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, step)
        # Dropout draws from torch's RNG: seeding it per step makes a resumed run match a straight one.
        torch.manual_seed(cfg.seed * 1_000_003 + stage * 100_003 + step)
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        total = 0.0
        for micro in range(cfg.grad_accum):
            batch = objective.batch(step, micro)
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
            with amp:
                loss, part = objective.loss(batch)
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
            for k, v in part.items():
                parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
            samples += cfg.batch_size
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        if math.isfinite(total) and torch.isfinite(norm):
            optimizer.step()
            bad_streak = 0
        else:
            # A non-finite loss or gradient would turn every weight into NaN: skip the update, and stop
            # with a clear error when it keeps happening (a bug, not one unlucky batch).
            bad_streak += 1
            skipped += 1
            log.warning("stage %d step %d: non-finite loss %s or gradient norm %s; update skipped",
                        stage, step + 1, total, float(norm))  # fmt: skip
            if bad_streak >= MAX_NONFINITE_STREAK:
                raise FloatingPointError(
                    f"stage {stage}: {bad_streak} consecutive steps (up to step {step + 1}) had a non-finite "
                    f"loss or gradient; the last resumable state is in {stage_dir / 'last'}"
                )
        losses.append(total)
        rate = samples / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{total:.4f}", samples_s=f"{rate:.1f}")
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "loss": total, **parts, "lr": optimizer.param_groups[0]["lr"],
                      "samples_per_s": rate, "skipped_steps": skipped, "time": time.time()}  # fmt: skip
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save_state(stage_dir, params, optimizer, step + 1, cfg)
    bar.close()
    metrics_file.close()
    _save_state(stage_dir, params, optimizer, cfg.steps, cfg)
    final = save_checkpoint(
        model.eval(), stage_dir / "final", model_id=f"molm3d-{cfg.preset}-stage{stage}",
        metadata={"stage": stage, "steps": cfg.steps, "train_config": cfg.to_dict()},
    )  # fmt: skip
    return StageResult(stage=stage, steps=cfg.steps, final_checkpoint=final, losses=losses)
