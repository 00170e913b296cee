"""`molm3d predict` end to end: real RDKit conformers, real model code, tiny checkpoints saved to disk.

The heads' statistics come from real values (the first QM9 molecules' DFT targets and their RDKit
descriptors), so the values are in each target's unit and scale; the head weights are random, so every
molecule gets different values and a mix-up between molecules or properties shows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from molm3d_core.checkpoints import save_checkpoint
from molm3d_core.cli.main import main
from molm3d_core.cli.output import property_column
from molm3d_core.targets import TARGETS
from tests.helpers import molecule_batch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIBRARY = "CCO ethanol\nC1CC( broken\nc1ccccc1 benzene\nCC(=O)O acetic_acid\n"
OK_SMILES = ["CCO", "c1ccccc1", "CC(=O)O"]  # the records of LIBRARY that parse, in order
PROVENANCE = ("record_id", "smiles", "inchikey", "source_format", "conformer_method", "warnings", "model_id",
              "model_trained")  # fmt: skip


def _statistics_from_real_values(model) -> None:
    from molm3d_core.chem import parse_smiles
    from molm3d_core.data.properties import rdkit_properties
    from molm3d_core.data.qm9 import read_qm9

    names = model.property_head.targets
    rows = [{**m.targets, **rdkit_properties(parse_smiles(m.smiles).mol)} for m in read_qm9(limit=8)]
    values = torch.tensor([[row[n] for n in names] for row in rows], dtype=torch.float64)
    model.property_head.set_statistics(values, torch.ones_like(values, dtype=torch.bool))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"trained": heads with statistics, "untrained": the same heads without, "no_heads": none}."""
    from molm3d_core.models import MoLM3D, MoLM3DConfig
    from molm3d_core.models.heads import PropertyHeadConfig

    root = tmp_path_factory.mktemp("predict")
    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    untrained = save_checkpoint(model, root / "untrained", model_id="tiny-untrained-heads")
    _statistics_from_real_values(model)
    trained = save_checkpoint(model, root / "trained", model_id="tiny-predict")
    config = MoLM3DConfig.preset_config("tiny")
    config.property_head = PropertyHeadConfig(targets=())
    no_heads = save_checkpoint(MoLM3D(config).eval(), root / "no_heads", model_id="tiny-no-heads")
    return {"trained": trained, "untrained": untrained, "no_heads": no_heads, "model": model}


@pytest.fixture(scope="module")
def direct(checkpoints):
    """model.predict_properties on the same conformers (seed 42, the CLI's default), one batch."""
    with torch.no_grad():
        values = checkpoints["model"].predict_properties(molecule_batch(OK_SMILES, seed=42))
    return {name: v.tolist() for name, v in values.items()}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _library(tmp_path) -> Path:
    path = tmp_path / "library.smi"
    path.write_text(LIBRARY)
    return path


def test_one_row_per_record_in_order_with_units_and_the_heads_values(tmp_path, checkpoints, direct, capsys):
    out = tmp_path / "out.jsonl"
    code, stdout, err = _run(capsys, "predict", _library(tmp_path), "--checkpoint", checkpoints["trained"], "-o", out)
    assert code == 1 and stdout == ""  # one record failed; the others were answered
    assert "broken: invalid_smiles" in err and "1 of 4 records failed" in err and "note:" not in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record_id"] for r in rows] == ["ethanol", "broken", "benzene", "acetic_acid"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    assert {r["task"] for r in rows} == {"predict"}
    bad = rows[1]
    assert bad["error_code"] == "invalid_smiles" and "C1CC(" in bad["error_message"] and "properties" not in bad

    ok = [rows[0], rows[2], rows[3]]
    targets = checkpoints["model"].property_head.targets
    for i, row in enumerate(ok):
        assert set(PROVENANCE) <= set(row)
        assert row["smiles"] == OK_SMILES[i] and row["source_format"] == "smiles"
        assert row["conformer_method"] == "etkdg_v3+mmff"
        assert row["model_id"] == "tiny-predict" and row["model_trained"] is True
        assert list(row["properties"]) == list(targets)  # every head, in the checkpoint's order
        for name, prop in row["properties"].items():
            assert set(prop) == {"value", "unit"}
            assert prop["unit"] == TARGETS[name].unit
            assert prop["value"] == pytest.approx(direct[name][i], rel=1e-6, abs=1e-9)
    assert rows[0]["inchikey"] == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    assert rows[0]["properties"]["homo"]["unit"] == "eV" and rows[0]["properties"]["logp"]["unit"] is None
    # Random heads: molecules get different values (a row-to-row mix-up would not pass the check above).
    assert rows[0]["properties"]["homo"]["value"] != rows[2]["properties"]["homo"]["value"]


def test_properties_pick_and_order_the_outputs(checkpoints, direct, capsys):
    code, out, _ = _run(capsys, "predict", "--checkpoint", checkpoints["trained"],
                        "--properties", "mw", "homo", "mw", "--", *OK_SMILES)  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["record_id"] for r in rows] == ["arg1", "arg2", "arg3"]
    for i, row in enumerate(rows):
        assert list(row["properties"]) == ["mw", "homo"]  # as given, duplicates dropped
        assert row["properties"]["mw"] == {"value": pytest.approx(direct["mw"][i], rel=1e-6), "unit": "g/mol"}
        assert row["properties"]["homo"] == {"value": pytest.approx(direct["homo"][i], rel=1e-6), "unit": "eV"}


def test_csv_has_one_column_per_property_named_with_its_unit(tmp_path, checkpoints, direct, capsys):
    code, out, _ = _run(capsys, "predict", _library(tmp_path), "--properties", "homo", "mw", "logp", "cv",
                        "--format", "csv", "--checkpoint", checkpoints["trained"])  # fmt: skip
    assert code == 1
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == [
        "record_id", "status", "task", "smiles", "inchikey", "source_format", "conformer_method", "warnings",
        "model_id", "model_trained", "homo_eV", "mw_g/mol", "logp", "cv_cal/(mol K)", "error_code", "error_message",
    ]  # fmt: skip
    rows = list(reader)
    assert [r["record_id"] for r in rows] == ["ethanol", "broken", "benzene", "acetic_acid"]
    assert rows[1]["status"] == "error" and rows[1]["error_code"] == "invalid_smiles" and rows[1]["homo_eV"] == ""
    for i, row in enumerate([rows[0], rows[2], rows[3]]):
        assert row["status"] == "ok" and row["error_code"] == ""
        assert float(row["homo_eV"]) == pytest.approx(direct["homo"][i], rel=1e-6)
        assert float(row["mw_g/mol"]) == pytest.approx(direct["mw"][i], rel=1e-6)
        assert float(row["logp"]) == pytest.approx(direct["logp"][i], rel=1e-6, abs=1e-9)
        assert float(row["cv_cal/(mol K)"]) == pytest.approx(direct["cv"][i], rel=1e-6)


def test_csv_columns_default_to_every_head(checkpoints, capsys):
    code, out, _ = _run(capsys, "predict", "CCO", "--format", "csv", "--checkpoint", checkpoints["trained"])
    header = next(csv.reader(io.StringIO(out)))
    columns = [property_column(n) for n in checkpoints["model"].property_head.targets]
    assert code == 0 and header[10 : 10 + len(columns)] == columns
    assert {"tpsa_Å²", "rot_a_GHz", "alpha_bohr^3", "complexity", "logp"} <= set(columns)


def test_sdf_input_keeps_its_geometry(checkpoints, capsys):
    code, out, _ = _run(capsys, "predict", EXAMPLES / "molecules.sdf", "--properties", "gap",
                        "--checkpoint", checkpoints["trained"])  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["record_id"] for r in rows] == ["aspirin", "caffeine", "ibuprofen"]
    assert {r["conformer_method"] for r in rows} == {"input_3d"} and {r["source_format"] for r in rows} == {"sdf"}
    assert all(math.isfinite(r["properties"]["gap"]["value"]) for r in rows)


def test_unknown_property_exits_2_listing_the_heads(checkpoints, capsys):
    code, out, err = _run(capsys, "predict", "CCO", "--properties", "homo", "melting_point",
                          "--checkpoint", checkpoints["trained"])  # fmt: skip
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("molm3d predict: error: unknown property melting_point;")
    assert " ".join(checkpoints["model"].property_head.targets) in line


def test_checkpoint_without_heads_exits_2(checkpoints, capsys):
    code, out, err = _run(capsys, "predict", "CCO", "--checkpoint", checkpoints["no_heads"])
    assert code == 2 and out == ""
    assert "molm3d predict: error: this checkpoint has no property heads;" in err
    assert "Traceback" not in err


def test_untrained_heads_answer_with_a_note(checkpoints, capsys):
    code, out, err = _run(capsys, "predict", "CCO", "c1ccccc1", "--checkpoint", checkpoints["untrained"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2
    assert "note: tiny-untrained-heads: the property heads were never trained" in err
    assert {r["model_trained"] for r in rows} == {False}
    assert all(math.isfinite(p["value"]) for r in rows for p in r["properties"].values())


def test_predict_never_builds_the_lm(checkpoints, capsys, monkeypatch):
    import molm3d_core.models.molm3d as molm3d_module

    def no_lm(*args, **kwargs):
        raise AssertionError("predict built the LM")

    monkeypatch.setattr(molm3d_module, "MolLM", no_lm)
    code, out, _ = _run(capsys, "predict", "CCO", "--properties", "homo", "--checkpoint", checkpoints["trained"])
    assert code == 0 and json.loads(out)["properties"]["homo"]["unit"] == "eV"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "CCO", "--remote", "localhost:50051"], "unrecognized arguments"),
        (["predict", "CCO", "--beams", "2"], "unrecognized arguments"),
        (["predict", "CCO", "--properties"], "expected at least one argument"),
    ],
)
def test_predict_refuses_options_it_has_not(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_predictor_checks_predict_before_reading_records(checkpoints):
    from molm3d_core.checkpoints import load_model
    from molm3d_core.pipeline import Predictor

    def records():
        raise AssertionError("records were read")
        yield

    model, info = load_model(checkpoints["untrained"], device="cpu", dtype="float32", with_lm=False)
    assert model.lm is None
    with pytest.raises(ValueError, match="never trained"):
        Predictor(model, info).run(records(), "predict")
    with pytest.raises(ValueError, match="unknown property nope"):
        Predictor(model, info, properties=("homo", "nope"))
