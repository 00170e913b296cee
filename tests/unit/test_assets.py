"""Packaged assets resolve locally; unknown names and missing paths are clear errors."""

from __future__ import annotations

import pytest

from molm3d_core.assets import AssetError, resolve_asset


def test_packaged_assets_resolve_to_local_folders():
    lm = resolve_asset("packaged:smollm2-135m-instruct", convert=False)  # converted by `make setup`
    assert (lm / "model.safetensors").exists() and (lm / "tokenizer.json").exists()
    assert (resolve_asset("packaged:all-minilm-l6-v2") / "model.safetensors").exists()


def test_unknown_asset_and_missing_path(tmp_path):
    with pytest.raises(AssetError, match="unknown packaged asset"):
        resolve_asset("packaged:gpt-5")
    with pytest.raises(AssetError, match="does not exist"):
        resolve_asset(str(tmp_path / "nowhere"))
