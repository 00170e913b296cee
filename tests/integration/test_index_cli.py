"""`molm3d index build | add | remove | info` and `molm3d retrieve` end to end on a tiny checkpoint."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from molm3d_core.checkpoints import save_checkpoint
from molm3d_core.cli.main import main

LIBRARY = "CCO ethanol\nc1ccccc1 benzene\nC1CC( broken\nCC(=O)O acetic_acid\nc1ccncc1 pyridine\n"
TEXTS = [
    {"id": "t1", "text": "ethanol is a primary alcohol", "source": "tiny"},
    {"id": "t2", "text": "benzene is an aromatic hydrocarbon"},
    {"id": "t3", "text": "acetic acid is a carboxylic acid"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny", model_id="tiny-index")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_molecule_index_build_retrieve_add_remove(tmp_path, checkpoint, capsys):
    library = tmp_path / "library.smi"
    library.write_text(LIBRARY)
    index = tmp_path / "idx"
    code, _, err = _run(capsys, "index", "build", "--molecules", library, "-o", index, "--checkpoint", checkpoint)
    assert code == 1  # one record skipped; the other four are indexed and committed
    assert "skipped: broken: invalid_smiles" in err and "indexed 4 records, skipped 1" in err

    code, out, _ = _run(capsys, "retrieve", "--index", index, "--text", "an alcohol", "-k", "3", "--format", "csv",
                        "--checkpoint", checkpoint)  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and [r["rank"] for r in rows] == ["1", "2", "3"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {"id", "score", "smiles", "inchikey", "conformer_method"} <= set(rows[0])
    assert {r["id"] for r in rows} <= {"ethanol", "benzene", "acetic_acid", "pyridine"}

    more = tmp_path / "more.smi"
    more.write_text("CCN ethylamine\n")
    assert _run(capsys, "index", "add", "--index", index, "--molecules", more, "--checkpoint", checkpoint)[0] == 0
    code, _, err = _run(capsys, "index", "remove", "--index", index, "--ids", "benzene", "nope")
    assert code == 1 and "not in the index: nope" in err
    code, out, _ = _run(capsys, "retrieve", "--index", index, "--text", "an amine", "-k", "10", "--rerank",
                        "--checkpoint", checkpoint)  # fmt: skip
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {h["id"] for h in hits} == {"ethanol", "acetic_acid", "pyridine", "ethylamine"}
    assert all("match_score" in h for h in hits)
    manifest = json.loads(_run(capsys, "index", "info", "--index", index)[1])
    assert (manifest["version"], manifest["count"], manifest["checkpoint"]["model_id"]) == (3, 4, "tiny-index")


def test_text_index_and_refusals(tmp_path, checkpoint, tiny_model, capsys):
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in TEXTS) + '{"text": "no id"}\n')
    index = tmp_path / "texts.idx"
    code, _, err = _run(capsys, "index", "build", "--texts", corpus, "-o", index, "--checkpoint", checkpoint)
    assert code == 1 and "missing_field" in err
    code, out, _ = _run(capsys, "retrieve", "--index", index, "--smiles", "CCO", "-k", "2", "--checkpoint", checkpoint)
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(hits) == 2 and all(h["text"] for h in hits)

    code, _, err = _run(capsys, "retrieve", "--index", index, "--text", "x", "--checkpoint", checkpoint)
    assert code == 2 and "holds texts" in err
    code, _, err = _run(capsys, "index", "build", "--texts", corpus, "-o", tmp_path / "pq", "--kind", "ivfpq",
                        "--pq-m", "4", "--checkpoint", checkpoint)  # fmt: skip
    assert code == 2 and "needs at least 1024 vectors" in err and not (tmp_path / "pq" / "CURRENT").exists()

    with torch.no_grad():  # another checkpoint: same architecture, one weight changed
        tiny_model.text_proj.bias[0] += 1.0
        other = save_checkpoint(tiny_model, tmp_path / "other", model_id="tiny-other")
        tiny_model.text_proj.bias[0] -= 1.0
    code, _, err = _run(capsys, "retrieve", "--index", index, "--smiles", "CCO", "--checkpoint", other)
    assert code == 2 and "refusing to mix" in err
    code, _, err = _run(capsys, "index", "add", "--index", index, "--texts", corpus, "--checkpoint", other)
    assert code == 2 and "refusing to mix" in err
