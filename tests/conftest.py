"""Shared fixtures: models are built once per session (the real LM loads in seconds from the cache)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_model():
    """The default checkpoint (models/molm3d-small, else the untrained small preset) on the real SmolLM2, fp32."""
    from molm3d_core.checkpoints import load_model

    model, info = load_model(None, device="cpu", dtype="float32", preset="small")
    return model, info


@pytest.fixture(scope="session")
def tiny_model():
    """Tiny everything (random LM of the SmolLM2 tokenizer): for plumbing, not language."""
    from molm3d_core.models import MoLM3D, MoLM3DConfig

    return MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
