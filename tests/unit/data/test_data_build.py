"""`molm3d data build` on a small slice: splits, answers, card, determinism, reader, retrieval, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from molm3d_core.cli.main import main
from molm3d_core.data import PROPERTY_SPECS, SPLITS, TASKS, BuildConfig, BuildError, build_dataset, load_dataset
from molm3d_core.data.qm9 import read_qm9
from molm3d_core.prompts import parse_number
from molm3d_core.targets import QM9_TARGETS, TARGETS

# Small molecules only (<= 22 heavy atoms), so the slice builds in seconds.
SLICE = {"limit": 60, "max_heavy_atoms": 22, "progress": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ds"
    build_dataset(BuildConfig(out, workers=1, **SLICE))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_molecule_rows(built: Path) -> None:
    assert sorted(_files(built)) == [
        "README.md",
        "card.json",
        "molecules.jsonl",
        "retrieval/test.jsonl",
        "tasks/test.jsonl",
        "tasks/train.jsonl",
        "tasks/valid.jsonl",
    ]
    data = load_dataset(built)
    sources = Counter(m["source"] for m in data.molecules.values())
    assert sources["qm9"] == 60 and 0 < sources["chebi"] <= 60
    for mol_id, row in data.molecules.items():
        assert set(row) == {"mol_id", "source", "split", "smiles", "name", "scaffold", "geometries", "targets"}
        assert row["split"] in SPLITS
        rdkit = {n for n, t in TARGETS.items() if t.source == "rdkit"}
        if row["source"] == "qm9":
            assert mol_id.startswith("qm9:") and row["name"] is None and "dft" in row["geometries"]
            assert set(row["targets"]) == set(QM9_TARGETS) | rdkit  # every DFT target, every descriptor
        else:
            assert mol_id.startswith("chebi:") and row["name"] and set(row["geometries"]) == {"etkdg"}
            assert set(row["targets"]) == rdkit
        for geometry in row["geometries"].values():
            assert "H" not in geometry["symbols"]
            assert len(geometry["coords"]) == len(geometry["symbols"])
            assert all(round(x, 3) == x for xyz in geometry["coords"] for x in xyz)


def test_qm9_targets_match_the_package_rows(built: Path) -> None:
    data = load_dataset(built)
    source = {m.mol_id: m for m in read_qm9(limit=60)}
    for mol_id, row in data.molecules.items():
        if row["source"] == "qm9":
            for name, value in source[mol_id].targets.items():
                assert row["targets"][name] == pytest.approx(value, abs=1e-5)
    # atomisation energies, not total ones: methane's U0 atomisation energy is about -17.2 eV
    assert data.molecules["qm9:000001"]["targets"]["u0_atom"] == pytest.approx(-17.17, abs=0.01)


def test_splits_are_disjoint_by_scaffold(built: Path) -> None:
    data = load_dataset(built)
    owner: dict[tuple[str, str], str] = {}
    for row in data.molecules.values():
        assert owner.setdefault((row["source"], row["scaffold"]), row["split"]) == row["split"]
    for split, rows in data.tasks.items():
        assert all(data.molecules[r["mol_id"]]["split"] == split for r in rows)


def test_answers_parse_back_to_labels(built: Path) -> None:
    data = load_dataset(built)
    seen = set()
    for rows in data.tasks.values():
        for row in rows:
            assert row["task"] in TASKS
            seen.add(row["task"])
            if row["task"] in PROPERTY_SPECS:
                parsed = parse_number(row["answer"])
                assert parsed is not None and parsed.value == row["label"], row
                assert row["unit"] == PROPERTY_SPECS[row["task"]].unit
            else:
                assert row["label"] is None and row["unit"] is None and row["answer"]
    assert {"homo", "lumo", "gap", "energy", "mw", "logp", "tpsa", "complexity", "caption", "identity"} <= seen


def test_card_counts_match_the_files(built: Path) -> None:
    data = load_dataset(built)
    counts = data.card["counts"]
    for split in SPLITS:
        assert counts["tasks"][split] == dict(Counter(r["task"] for r in data.tasks[split]))
    for source, by_split in counts["molecules"].items():
        rows = [m for m in data.molecules.values() if m["source"] == source]
        assert by_split["total"] == len(rows)
        assert {s: by_split[s] for s in SPLITS} == {s: sum(m["split"] == s for m in rows) for s in SPLITS}
    assert counts["retrieval"] == len(data.retrieval)
    assert data.card["files"] == {name: (built / name).stat().st_size for name in data.card["files"]}
    assert "qm9" in data.card["conformer_failures"] and data.card["tasks"]["homo"]["paraphrases"]
    assert "molm3d-moit" in (built / "README.md").read_text(encoding="utf-8")


def test_retrieval_pairs_are_captioned_chebi_test_molecules(built: Path) -> None:
    data = load_dataset(built)
    captions = {r["mol_id"]: r["answer"] for r in data.tasks["test"] if r["task"] == "caption"}
    assert data.retrieval and len(data.retrieval) == len(captions)  # with --limit: all that are available
    for pair in data.retrieval:
        assert data.molecules[pair["mol_id"]]["source"] == "chebi"
        assert pair["text"] == captions[pair["mol_id"]]


def test_build_is_deterministic_across_worker_counts(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_dataset(BuildConfig(again, workers=2, **SLICE))
    first, second = _files(built), _files(again)
    cards = [json.loads(files.pop("card.json")) for files in (first, second)]
    for files in (first, second):
        files.pop("README.md")
    assert first == second
    without_build = [{k: v for k, v in card.items() if k != "build"} for card in cards]
    assert without_build[0] == without_build[1]


def test_retrieval_size_is_exact_or_an_error(built: Path, tmp_path: Path) -> None:
    available = load_dataset(built).card["counts"]["retrieval_available"]
    assert available >= 2
    build_dataset(BuildConfig(tmp_path / "fewer", retrieval_size=available - 1, **SLICE))
    assert len(load_dataset(tmp_path / "fewer").retrieval) == available - 1
    with pytest.raises(BuildError, match="retrieval pairs"):
        build_dataset(BuildConfig(tmp_path / "many", retrieval_size=500, limit=12, max_heavy_atoms=12, progress=False))
    assert not (tmp_path / "many").exists()


def test_cli_refuses_existing_output(tmp_path: Path, capsys) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    assert main(["data", "build", "-o", str(occupied), "--limit", "5", "--no-progress"]) == 2
    assert "not empty; use --overwrite" in capsys.readouterr().err
    assert main(["data", "build", "-o", str(occupied), "--limit", "5", "--overwrite", "--no-progress"]) == 2
    assert "not a molm3d dataset" in capsys.readouterr().err
    assert (occupied / "notes.txt").read_text() == "keep me"


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "-o", str(tmp_path / "x"), "--limit", "0"])
    assert exit_info.value.code == 2
    assert main(["data", "build", "-o", str(tmp_path / "y"), "--qm9-split", "0.5,0.5", "--no-progress"]) == 2


def test_load_dataset_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path)
