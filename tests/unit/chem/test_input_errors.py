"""RDKit's error text reaches users (CLI rows, served errors, dead letters) without its internals."""

from __future__ import annotations

import re

import pytest

from molm3d_core.chem import parse_text
from molm3d_core.errors import ErrorCode, MoleculeError
from tests.helpers import ETHANOL_MOLBLOCK

ETHANOL = ETHANOL_MOLBLOCK
INTERNALS = re.compile(r"Stacktrace|Violation occurred|Failed Expression|\.so\b|\.h\b|\.cpp\b|/project/|site-packages")


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        ("mol", ETHANOL.replace(" O   0", " Xx  0"), "Element 'Xx' not found"),  # an invariant violation in RDKit
        ("sdf", ETHANOL.replace("  1  2  1  0", "  1  9  1  0"), "Range Error"),
        ("xyz", "2\nframe\nXx 0 0 0\nC 1.5 0 0\n", "Element 'Xx' not found"),
    ],
)
def test_rdkit_invariant_violations_keep_their_reason_and_lose_their_internals(fmt, text, reason):
    [error] = parse_text(text, fmt)
    assert isinstance(error, MoleculeError) and error.code == ErrorCode.PARSE_ERROR
    assert reason in error.message and not INTERNALS.search(error.message), error.message
