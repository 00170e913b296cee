"""The report: JSON round trip (NaN -> null) and a markdown table that shows the numbers."""

from __future__ import annotations

import json
import math

from molm3d_core.evaluation import (
    SECTION_DFT,
    SECTION_TRAIN_MEAN,
    EvaluationReport,
    mean_baseline,
    property_mae,
    retrieval_scores,
    text_metrics,
)


def _report() -> EvaluationReport:
    report = EvaluationReport(title="3D-MoLM small", metadata={"checkpoint": "ckpt/stage3"})
    report.add(SECTION_DFT, "homo", property_mae("homo", ["-5.850 eV", "no"], [-5.9, -6.0]))
    report.add(SECTION_DFT, "caption", text_metrics(["the cat sat"], ["the cat is here"], meteor_synonyms=False))
    report.add(SECTION_DFT, "retrieval (full)", retrieval_scores([[2.0, 1.0], [0.0, 1.0]]))
    report.add(SECTION_DFT, "lumo", property_mae("lumo", ["none"], [-1.0]))
    report.add(SECTION_TRAIN_MEAN, "homo", mean_baseline([-6.0, -5.0], [-5.0, -7.0]))
    return report


def test_markdown_has_sections_rows_and_numbers():
    text = _report().to_markdown()
    assert f"## {SECTION_DFT}" in text and f"## {SECTION_TRAIN_MEAN}" in text
    assert "| homo | 0.05 | 0.50 | 2 | 1 |" in text  # mae, valid_ratio, n, n_valid
    assert "57.14" in text and "40.00" in text  # ROUGE-1 and ROUGE-2 of the caption row
    assert "100.00" in text  # retrieval accuracy
    assert "| lumo | n/a | 0.00 | 1 | 0 |" in text  # no valid answer: MAE is n/a
    assert "| homo | 1.00 | 1.00 | 2 | 2 |" in text  # training mean -5.5: |0.5| and |1.5|
    assert "no WordNet synonyms" in text  # the METEOR note travels with the section
    assert "- checkpoint: ckpt/stage3" in text
    header = next(line for line in text.splitlines() if line.startswith("| task | mae"))
    assert "meteor_exact_stem" in header and "m2t_acc" in header
    caption_row = next(line for line in text.splitlines() if line.startswith("| caption"))
    assert caption_row.startswith("| caption | - | - | 1 | - |")  # metrics it lacks show as "-"


def test_json_round_trip_turns_nan_into_null():
    report = _report()
    data = json.loads(report.to_json())
    dft = data["sections"][0]
    assert dft["title"] == SECTION_DFT
    assert dft["rows"]["lumo"]["mae"] is None
    assert math.isclose(dft["rows"]["homo"]["mae"], 0.05)
    again = EvaluationReport.from_dict(data)
    assert math.isnan(again.sections[SECTION_DFT].rows["lumo"]["mae"])
    assert again.to_markdown() == report.to_markdown()
