"""Processes that never run a model do not import torch (it costs each of them ~250 MB)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["services.conformer.deployment", "services.gateway.deployment", "services.retrieval.deployment", "services.cli"],
)
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
