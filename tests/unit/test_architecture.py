"""The core library is the product: it imports no serving or messaging code."""

from __future__ import annotations

import ast
from pathlib import Path

import molm3d_core

FORBIDDEN = ("ray", "grpc", "kafka", "faiss_service", "services")


def test_core_imports_no_service_code():
    root = Path(molm3d_core.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
