"""`molm3d` end to end on the real default LM and the default checkpoint (models/molm3d-small)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from molm3d_core.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_captions_a_file_with_provenance(tmp_path):
    smi = tmp_path / "in.smi"
    smi.write_text("CC(=O)Oc1ccccc1C(=O)O aspirin\nC1CC( broken\nc1ccncc1 pyridine\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "molm3d"), "caption", str(smi), "-o", str(out), "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one record failed; the others were still answered
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record_id"] for r in rows] == ["aspirin", "broken", "pyridine"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    ok = rows[0]
    assert ok["smiles"] == "CC(=O)Oc1ccccc1C(=O)O" and ok["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert ok["conformer_method"] == "etkdg_v3+mmff" and ok["model_id"] and ok["caption"]
    assert rows[1]["error_code"] == "invalid_smiles" and "C1CC(" in rows[1]["error_message"]
    assert "broken" in proc.stderr and "1 of 3 records failed" in proc.stderr


def test_demo_captions_end_at_eos_with_the_default_decoding(capsys):
    # The caption default (repetition penalty 1.2 over the 4-gram block) is what stops caffeine's
    # caption from counting locants "2,3,4,...,40," to the token limit; answers keep no penalty.
    code, out, _ = _run(capsys, "caption", str(EXAMPLES / "molecules.smi"))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8 and {r["finish_reason"] for r in rows} == {"eos"}, [r["caption"] for r in rows]


def test_ask_on_sdf_keeps_input_geometry_and_parses_numbers(capsys):
    code, out, _ = _run(capsys, "ask", str(EXAMPLES / "molecules.sdf"), "-q", "What is the HOMO energy?",
                        "--max-new-tokens", "6", "--format", "csv")  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["record_id"] for r in rows] == ["aspirin", "caffeine", "ibuprofen"]
    assert {r["conformer_method"] for r in rows} == {"input_3d"}
    assert {r["question"] for r in rows} == {"What is the HOMO energy?"}
    assert {"value", "unit", "answer", "finish_reason"} <= set(rows[0])
    for r in rows:  # a parsed value, when present, is the first number of the answer
        if r["value"]:
            assert r["value"].lstrip("-").replace(".", "", 1).isdigit() or "e" in r["value"].lower()


def test_embed_outputs_query_token_vectors(capsys):
    code, out, _ = _run(capsys, "embed", "CCO", "c1ccccc1")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2
    q, e = rows[0]["embedding_shape"]
    assert len(rows[0]["embedding"]) == q and len(rows[0]["embedding"][0]) == e
    assert rows[0]["embedding"] != rows[1]["embedding"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["caption", "CCO", "--format", "xml"], "invalid choice"),
        (["caption", "CCO", "--batch-size", "0"], "must be >= 1"),
        (["ask", "CCO"], "--question"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_readable_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_empty_question_are_clear_errors(capsys, tmp_path):
    code, _, err = _run(capsys, "caption", "CCO", "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "not a molm3d checkpoint" in err
    code, _, err = _run(capsys, "ask", "CCO", "-q", "   ")
    assert code == 2 and "non-empty question" in err
