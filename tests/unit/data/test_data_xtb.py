"""Optional GFN2-xTB labels: own task names, ChEBI only, and a clear error without tblite."""

from __future__ import annotations

from pathlib import Path

import pytest

from molm3d_core.chem import generate_conformer, parse_smiles
from molm3d_core.data import BuildConfig, BuildError, build_dataset, load_dataset
from molm3d_core.data.xtb import xtb_available, xtb_orbitals

needs_tblite = pytest.mark.skipif(not xtb_available(), reason="tblite is not installed")


@needs_tblite
def test_xtb_orbitals_of_benzene() -> None:
    orbitals = xtb_orbitals(generate_conformer(parse_smiles("c1ccccc1")).mol)
    assert -14.0 < orbitals.homo < orbitals.lumo < 0.0  # GFN2-xTB scale: HOMO near -11 eV


@needs_tblite
def test_build_with_xtb_labels_chebi_only(tmp_path: Path) -> None:
    build_dataset(BuildConfig(tmp_path / "ds", limit=15, max_heavy_atoms=25, xtb=True, progress=False))
    data = load_dataset(tmp_path / "ds")
    rows = [r for rows in data.tasks.values() for r in rows if r["task"] in ("xtb_homo", "xtb_lumo")]
    assert rows and all(r["mol_id"].startswith("chebi:") and r["unit"] == "eV" for r in rows)
    assert data.card["xtb_failures"] == 0 and any(s["name"].startswith("GFN2-xTB") for s in data.card["sources"])


def test_xtb_without_tblite_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("molm3d_core.data.xtb.xtb_available", lambda: False)
    with pytest.raises(BuildError, match="pip install tblite"):
        build_dataset(BuildConfig(tmp_path / "ds", limit=5, xtb=True, progress=False))
    assert not (tmp_path / "ds").exists()
