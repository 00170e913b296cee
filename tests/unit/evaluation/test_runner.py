"""`molm3d eval` end to end on a tiny model and dataset: every section, the baselines, the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from molm3d_core.checkpoints import save_checkpoint
from molm3d_core.cli.main import main
from molm3d_core.evaluation.report import SECTION_CONFORMER, SECTION_DFT, SECTION_SMILES_ONLY, SECTION_TRAIN_MEAN
from molm3d_core.evaluation.runner import EvalOptions, evaluate
from molm3d_core.models import MoLM3D, MoLM3DConfig
from tests.helpers import write_tiny_dataset


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"), split="test")


def test_every_section_and_the_mean_baseline(tiny_model, test_set):
    baseline = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    baseline.config.molecule_tokens = False
    opts = EvalOptions(decoding={"max_new_tokens": 4}, progress=False)
    report = evaluate(tiny_model, test_set, opts, smiles_only=baseline, model_id="tiny").to_dict()
    sections = {s["title"]: s for s in report["sections"]}
    assert set(sections) == {SECTION_DFT, SECTION_CONFORMER, SECTION_SMILES_ONLY, SECTION_TRAIN_MEAN}
    for title in (SECTION_DFT, SECTION_CONFORMER, SECTION_SMILES_ONLY):
        rows = sections[title]["rows"]
        assert rows["mw"]["n"] == 6 and 0.0 <= rows["mw"]["valid_ratio"] <= 1.0
        assert rows["caption"]["n"] == 6
    retrieval = sections[SECTION_CONFORMER]["rows"]["retrieval (full)"]
    assert retrieval["n"] == 6 and 0 <= retrieval["m2t_acc"] <= 100
    # The training mean is 100.0 g/mol: the baseline's MAE by hand.
    labels = [json.loads(line)["label"] for line in (test_set / "tasks" / "test.jsonl").read_text().splitlines()
              if json.loads(line)["task"] == "mw"]  # fmt: skip
    mean_row = sections[SECTION_TRAIN_MEAN]["rows"]["mw"]
    assert mean_row["mae"] == pytest.approx(np.mean([abs(x - 100.0) for x in labels]))
    assert mean_row["valid_ratio"] == 1.0
    # Every section carries bootstrap intervals (default: 1,000 resamples).
    assert mean_row["mae_ci_low"] <= mean_row["mae"] <= mean_row["mae_ci_high"]
    for title in (SECTION_DFT, SECTION_CONFORMER, SECTION_SMILES_ONLY):
        rows = sections[title]["rows"]
        assert rows["mw"]["valid_ratio_ci_low"] <= rows["mw"]["valid_ratio"] <= rows["mw"]["valid_ratio_ci_high"]
        assert rows["caption"]["bleu2_ci_low"] <= rows["caption"]["bleu2"] <= rows["caption"]["bleu2_ci_high"]
        assert "rougeL_ci_high" in rows["caption"] and "repeat4" in rows["caption"]


def test_eval_cli_writes_json_and_markdown(tiny_model, test_set, tmp_path, capsys):
    save_checkpoint(tiny_model, tmp_path / "ckpt", model_id="tiny-eval")
    code = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(test_set), "--tasks", "mw", "retrieval",
                 "--limit", "3", "--max-new-tokens", "4", "--json", str(tmp_path / "r.json"),
                 "--markdown", str(tmp_path / "r.md")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metadata"]["model_id"] == "tiny-eval"
    rows = {s["title"]: s["rows"] for s in report["sections"]}[SECTION_CONFORMER]
    assert set(rows) >= {"mw", "retrieval (full)"} and "caption" not in rows
    assert rows["mw"]["n"] == 3
    assert "| mw |" in (tmp_path / "r.md").read_text() and "mw" in capsys.readouterr().out


def test_no_rerank_scores_retrieval_by_similarity_alone(tiny_model, test_set, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt", model_id="tiny-eval")
    args = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(test_set), "--tasks", "retrieval",
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main([*args, "--no-rerank"]) == 0
    plain = {s["title"]: s["rows"] for s in json.loads((tmp_path / "r.json").read_text())["sections"]}
    assert set(plain[SECTION_CONFORMER]) == {"retrieval (in_batch)", "retrieval (full)"}
    assert main(args) == 0
    both = {s["title"]: s["rows"] for s in json.loads((tmp_path / "r.json").read_text())["sections"]}
    assert set(both[SECTION_CONFORMER]) == {
        f"retrieval ({s})" for s in ("in_batch", "full", "in_batch_rerank", "full_rerank")
    }
    assert both[SECTION_CONFORMER]["retrieval (full)"] == plain[SECTION_CONFORMER]["retrieval (full)"]
