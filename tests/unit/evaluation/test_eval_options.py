"""`molm3d eval` options on a tiny model and dataset: separate text limit, property-head sections,
token ablation, decoding grid, non-TTY progress lines and the decoding flags of the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from molm3d_core.checkpoints import save_checkpoint
from molm3d_core.chem import collate
from molm3d_core.cli.main import main
from molm3d_core.data.features import molecule_features
from molm3d_core.decoding import default_decoding
from molm3d_core.evaluation.report import (
    SECTION_CONFORMER,
    SECTION_DFT,
    SECTION_HEADS_CONFORMER,
    SECTION_HEADS_DFT,
)
from molm3d_core.evaluation.runner import DECODING_GRID, EvalOptions, evaluate, swap_donors
from molm3d_core.models import Generation, MoLM3D, MoLM3DConfig
from tests.helpers import write_tiny_dataset

FAST = {"max_new_tokens": 2}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"), split="test")


@pytest.fixture(scope="module")
def heads_set(tmp_path_factory):
    """The tiny test set plus logp (a head target) and energy (a property task no head predicts), with a
    DFT geometry that differs from the conformer (stretched by 5 %)."""
    root = write_tiny_dataset(tmp_path_factory.mktemp("heads"), split="test")
    molecules = _read_jsonl(root / "molecules.jsonl")
    for m in molecules:
        dft = m["geometries"]["dft"]
        m["geometries"]["dft"] = {**dft, "coords": (np.asarray(dft["coords"]) * 1.05).round(3).tolist()}
    _write_jsonl(root / "molecules.jsonl", molecules)
    tasks = _read_jsonl(root / "tasks" / "test.jsonl")
    for m in molecules:
        logp = round(m["targets"]["logp"], 2)
        tasks.append({"mol_id": m["mol_id"], "task": "logp", "instruction": "What is the LogP?",
                      "answer": f"The LogP is {logp:.2f}.", "label": logp, "unit": None})  # fmt: skip
        tasks.append({"mol_id": m["mol_id"], "task": "energy", "instruction": "What is the energy?",
                      "answer": "The energy is -1000.00 eV.", "label": -1000.0, "unit": "eV"})  # fmt: skip
    _write_jsonl(root / "tasks" / "test.jsonl", tasks)
    return root


@pytest.fixture(scope="module")
def heads_model(heads_set):
    """A tiny model whose (random) property heads have target statistics, as stage 0 sets them."""
    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    head = model.property_head
    molecules = _read_jsonl(heads_set / "molecules.jsonl")
    values = torch.tensor([[m["targets"].get(t, 0.0) for t in head.targets] for m in molecules], dtype=torch.float64)
    present = torch.tensor([[t in m["targets"] for t in head.targets] for m in molecules])
    head.set_statistics(values, present)
    return model


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(tiny_model, path, model_id="tiny-eval")
    return path


def _sections(report) -> dict[str, dict]:
    return {s["title"]: s for s in report.to_dict()["sections"]}


def test_text_limit_caps_text_tasks_only(tiny_model, test_set):
    opts = EvalOptions(tasks=("mw", "caption"), text_limit=2, decoding=FAST, progress=False, bootstrap=None)
    rows = _sections(evaluate(tiny_model, test_set, opts))[SECTION_CONFORMER]["rows"]
    assert rows["mw"]["n"] == 6 and rows["caption"]["n"] == 2
    opts = EvalOptions(tasks=("mw", "caption"), limit=3, decoding=FAST, progress=False, bootstrap=None)
    rows = _sections(evaluate(tiny_model, test_set, opts))[SECTION_CONFORMER]["rows"]
    assert rows["mw"]["n"] == 3 and rows["caption"]["n"] == 3


def test_captions_and_answers_decode_with_their_task_defaults(tiny_model, test_set, monkeypatch):
    seen: dict[str, set[float]] = {}
    generate = tiny_model.generate

    def spy(features, smiles, questions, decoding):
        task = "caption" if "describe" in questions[0].lower() else "mw"
        seen.setdefault(task, set()).add(decoding.repetition_penalty)
        return generate(features, smiles, questions, decoding)

    monkeypatch.setattr(tiny_model, "generate", spy)
    opts = EvalOptions(tasks=("mw", "caption"), limit=2, decoding=FAST, progress=False, bootstrap=None, heads=False)
    evaluate(tiny_model, test_set, opts)
    assert seen == {"caption": {1.2}, "mw": {1.0}}  # as `molm3d caption` / `molm3d ask` and the gateway
    seen.clear()
    evaluate(tiny_model, test_set, EvalOptions(**{**vars(opts), "decoding": {**FAST, "repetition_penalty": 1.1}}))
    assert seen == {"caption": {1.1}, "mw": {1.1}}  # a given penalty is every task's
    with pytest.raises(ValueError, match="unknown decoding options"):
        EvalOptions(decoding={"beam_width": 4})
    with pytest.raises(ValueError, match="repetition_penalty"):
        EvalOptions(decoding={"repetition_penalty": 0})


def _head_mae(model, dataset, task, geometry):
    molecules = {m["mol_id"]: m for m in _read_jsonl(dataset / "molecules.jsonl")}
    rows = [r for r in _read_jsonl(dataset / "tasks" / "test.jsonl") if r["task"] == task]
    features = collate([molecule_features(molecules[r["mol_id"]], geometry, model.config.max_atoms) for r in rows])
    with torch.no_grad():
        predicted = model.predict_properties(features)[task].numpy()
    return float(np.mean(np.abs(predicted - np.array([r["label"] for r in rows]))))


def test_heads_sections_score_the_head_tasks_like_predict_properties(heads_model, heads_set):
    opts = EvalOptions(tasks=("mw", "logp", "energy"), decoding=FAST, progress=False)
    report = evaluate(heads_model, heads_set, opts)
    sections = _sections(report)
    assert set(sections[SECTION_CONFORMER]["rows"]) == {"mw", "logp", "energy"}  # the LM answers all three
    for title, geometry in ((SECTION_HEADS_DFT, "dft"), (SECTION_HEADS_CONFORMER, "etkdg")):
        rows = sections[title]["rows"]
        assert set(rows) == {"mw", "logp"}  # energy is no head target
        for task in ("mw", "logp"):
            expected = _head_mae(heads_model, heads_set, task, geometry)
            assert rows[task]["mae"] == pytest.approx(expected, rel=1e-6), (title, task)
            assert rows[task]["n"] == 6
            assert rows[task]["mae_ci_low"] <= rows[task]["mae"] <= rows[task]["mae_ci_high"]
    # Different geometries, different predictions.
    assert sections[SECTION_HEADS_DFT]["rows"]["mw"]["mae"] != sections[SECTION_HEADS_CONFORMER]["rows"]["mw"]["mae"]
    assert report.metadata["property_heads"].startswith("scored")
    assert "## property heads (DFT geometry)" in report.to_markdown()


def test_no_heads_sections_without_trained_heads_or_when_off(tiny_model, heads_model, heads_set):
    opts = EvalOptions(tasks=("mw",), decoding=FAST, progress=False, bootstrap=None)
    report = evaluate(tiny_model, heads_set, opts)  # random heads without statistics
    assert not {SECTION_HEADS_DFT, SECTION_HEADS_CONFORMER} & set(_sections(report))
    assert report.metadata["property_heads"].startswith("untrained")
    off = evaluate(heads_model, heads_set, EvalOptions(tasks=("mw",), decoding=FAST, progress=False, heads=False))
    assert not {SECTION_HEADS_DFT, SECTION_HEADS_CONFORMER} & set(_sections(off))


def test_geometries_option_scores_only_the_chosen_inputs(heads_model, heads_set):
    full = _sections(evaluate(heads_model, heads_set, EvalOptions(tasks=("logp",), decoding=FAST, progress=False)))
    opts = EvalOptions(tasks=("logp",), decoding=FAST, progress=False, geometries=("etkdg",))
    report = evaluate(heads_model, heads_set, opts)
    sections = _sections(report)
    assert not {SECTION_DFT, SECTION_HEADS_DFT} & set(sections)
    for title in (SECTION_CONFORMER, SECTION_HEADS_CONFORMER):  # the same numbers as with both geometries
        assert sections[title]["rows"]["logp"]["mae"] == pytest.approx(full[title]["rows"]["logp"]["mae"])
    assert report.metadata["geometries"] == ["etkdg"]
    with pytest.raises(ValueError, match="geometries"):
        evaluate(heads_model, heads_set, EvalOptions(tasks=("logp",), decoding=FAST, progress=False, geometries=()))


def test_no_lm_scores_the_heads_without_generating(heads_model, heads_set, monkeypatch):
    full = _sections(evaluate(heads_model, heads_set, EvalOptions(tasks=("logp",), decoding=FAST, progress=False)))

    def refuse(*args, **kwargs):
        raise AssertionError("the LM must not generate with lm=False")

    monkeypatch.setattr(heads_model.lm, "generate", refuse)
    sections = _sections(evaluate(heads_model, heads_set, EvalOptions(tasks=("logp",), progress=False, lm=False)))
    assert not {SECTION_DFT, SECTION_CONFORMER} & set(sections)
    for title in (SECTION_HEADS_DFT, SECTION_HEADS_CONFORMER):
        assert sections[title]["rows"]["logp"]["mae"] == pytest.approx(full[title]["rows"]["logp"]["mae"])


def test_swap_donors_is_a_seeded_derangement():
    donors = swap_donors(7, seed=0)
    assert sorted(donors) == list(range(7)) and all(d != i for i, d in enumerate(donors))
    assert (swap_donors(7, seed=0) == donors).all() and not (swap_donors(7, seed=1) == donors).all()
    assert swap_donors(1, seed=0).tolist() == [0]


def test_token_ablation_answers_do_not_change_when_all_molecules_are_the_same(tiny_model, tmp_path):
    root = write_tiny_dataset(tmp_path / "same", split="test")
    molecules = _read_jsonl(root / "molecules.jsonl")
    same = [{**molecules[0], "mol_id": m["mol_id"]} for m in molecules]
    _write_jsonl(root / "molecules.jsonl", same)
    tasks = [{**t, "label": 46.07} for t in _read_jsonl(root / "tasks" / "test.jsonl")]
    _write_jsonl(root / "tasks" / "test.jsonl", tasks)
    opts = EvalOptions(tasks=("mw",), decoding={"max_new_tokens": 6}, progress=False, batch_size=4,
                       token_ablation=True, heads=False)  # fmt: skip
    report = evaluate(tiny_model, root, opts)
    for title in (SECTION_DFT, SECTION_CONFORMER):
        row = _sections(report)[title]["rows"]["mw"]
        assert row["swap_identical"] == 1.0
        assert row["valid_ratio_swapped"] == row["valid_ratio"]
        assert row["mae_swapped"] == row["mae"]  # both null when the random LM gives no number
    assert "mae_swapped" in report.to_markdown() and "token ablation" in report.to_markdown()


def test_token_ablation_gives_each_example_another_molecules_tokens(tiny_model, test_set, monkeypatch):
    """An LM stub that answers the label + 1 of whichever molecule its tokens come from: the own-token MAE
    is 1, the swapped one follows the permutation, whatever the batch size."""
    molecules = {m["mol_id"]: m for m in _read_jsonl(test_set / "molecules.jsonl")}
    rows = [r for r in _read_jsonl(test_set / "tasks" / "test.jsonl") if r["task"] == "mw"]
    labels = np.array([r["label"] for r in rows])
    with torch.no_grad():
        reference = torch.stack([
            tiny_model.molecule_tokens(collate([molecule_features(molecules[r["mol_id"]], "etkdg", 256)]))[0]
            for r in rows
        ]).flatten(1)  # fmt: skip

    def stub(prompts, mol, decoding, streamer=None):
        nearest = torch.cdist(mol.flatten(1).float(), reference.float()).argmin(1).tolist()
        return [Generation(f"It is {labels[i] + 1:.2f} g/mol.", 8, "eos") for i in nearest]

    monkeypatch.setattr(tiny_model.lm, "generate", stub)
    results = []
    for batch_size in (1, 4):
        opts = EvalOptions(tasks=("mw",), decoding=FAST, progress=False, batch_size=batch_size, token_ablation=True,
                           heads=False, ablation_seed=3)  # fmt: skip
        results.append(_sections(evaluate(tiny_model, test_set, opts))[SECTION_CONFORMER]["rows"]["mw"])
    row = results[0]
    donors = swap_donors(len(rows), seed=3)
    expected_swapped = float(np.mean(np.abs(labels[donors] + 1 - labels)))
    assert row["mae"] == pytest.approx(1.0)
    assert row["mae_swapped"] == pytest.approx(expected_swapped) and expected_swapped > 5
    assert row["swap_ratio"] == pytest.approx(expected_swapped / row["mae"])
    assert row["swap_identical"] == 0.0
    assert row["swap_ratio_ci_low"] <= row["swap_ratio"] <= row["swap_ratio_ci_high"]
    assert row["mae_swapped_ci_low"] <= row["mae_swapped"] <= row["mae_swapped_ci_high"]
    assert results[1] == pytest.approx(row)  # batch size 1 and 4 pair the same molecules


def test_progress_lines_without_a_terminal(tiny_model, test_set, capsys):
    opts = EvalOptions(tasks=("mw",), decoding=FAST, progress=False, progress_every=1, batch_size=4, heads=False)
    evaluate(tiny_model, test_set, opts)
    err = capsys.readouterr().err
    assert f"eval | {SECTION_DFT}: mw | 0/6 examples" in err
    assert (
        f"eval | {SECTION_DFT}: mw | 4/6 examples |" in err
        and f"eval | {SECTION_CONFORMER}: mw | 6/6 examples |" in err
    )
    assert "ex/s" in err
    evaluate(tiny_model, test_set, EvalOptions(tasks=("mw",), decoding=FAST, progress=False, heads=False))
    assert "eval |" not in capsys.readouterr().err


GREEDY = {"temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []}  # the sampling fields, unused by eval


def test_cli_decoding_flags_bootstrap_and_progress(checkpoint, test_set, tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(test_set), "--tasks", "mw", "--limit", "4",
                 "--max-new-tokens", "3", "--beams", "2", "--repetition-penalty", "1.1", "--no-repeat-ngram", "3",
                 "--length-penalty", "0.8", "--bootstrap", "200", "--seed", "5",
                 "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    # a given penalty is every task's, captions' too
    given = {"num_beams": 2, "max_new_tokens": 3, "repetition_penalty": 1.1, "length_penalty": 0.8,
             "no_repeat_ngram_size": 3, **GREEDY}  # fmt: skip
    assert report["metadata"]["decoding"] == {"caption": given, "other tasks": given}
    assert "200 resamples, seed 5" in report["metadata"]["bootstrap"]
    row = {s["title"]: s["rows"] for s in report["sections"]}[SECTION_CONFORMER]["mw"]
    assert row["n"] == 4 and {"valid_ratio_ci_low", "valid_ratio_ci_high"} <= set(row)
    captured = capsys.readouterr()
    assert f"eval | {SECTION_CONFORMER}: mw | 4/4 examples" in captured.err  # pytest's stderr is no terminal
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(test_set), "--no-repeat-ngram", "-1"]) != 0


def test_cli_decoding_grid_compares_decodings_on_captions(checkpoint, test_set, tmp_path):
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(test_set), "--decoding-grid",
                 "--text-limit", "2", "--max-new-tokens", "3", "--bootstrap", "50",
                 "--json", str(tmp_path / "g.json"), "--markdown", str(tmp_path / "g.md")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert [s["title"] for s in report["sections"]] == ["decoding comparison: caption (SMILES conformer)"]
    rows = report["sections"][0]["rows"]
    assert list(rows) == [name for name, _ in DECODING_GRID]
    for row in rows.values():
        assert row["n"] == 2 and 1 <= row["mean_tokens"] <= 3 and row["tokens_per_s"] > 0
        assert {"bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "repeat4", "truncated", "bleu2_ci_low"} <= set(row)
    grid = report["metadata"]["decoding_grid"]
    assert grid["greedy"] == {"num_beams": 1, "max_new_tokens": 3, "repetition_penalty": 1.0, "length_penalty": 1.0,
                              "no_repeat_ngram_size": 0, **GREEDY}  # fmt: skip
    assert grid["greedy, no_repeat_ngram 3"]["no_repeat_ngram_size"] == 3
    shipped = json.loads(json.dumps(vars(default_decoding("caption", max_new_tokens=3))))
    assert shipped in grid.values()  # the shipped default is compared
    assert grid["beam 5, both penalties"] == {"num_beams": 5, "max_new_tokens": 3, "repetition_penalty": 1.2,
                                              "length_penalty": 1.0, "no_repeat_ngram_size": 3, **GREEDY}  # fmt: skip
    markdown = (tmp_path / "g.md").read_text()
    assert "| greedy |" in markdown and "| beam 5, both penalties |" in markdown and "tokens_per_s" in markdown
