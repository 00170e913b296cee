"""Retrieval index (`molm3d_core.retrieval`) on real FAISS: exactness, ANN recall, persistence, updates.

Vectors are random unit vectors unless a test says otherwise; the ANN recall tests use both the tiny
fixture model's real encoder on QM9 DFT geometries and clustered random vectors (see their docstrings).
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from molm3d_core.evaluation.retrieval import (
    index_retrieval_scores,
    reranked_retrieval_scores,
    retrieval_scores,
)
from molm3d_core.retrieval import (
    EmbeddingMismatchError,
    EmbeddingSource,
    IndexConfig,
    IndexConfigError,
    RetrievalIndex,
    Retriever,
    VectorIndex,
    build_index,
    read_manifest,
    read_molecule_library,
    read_text_corpus,
    update_index,
    weights_fingerprint,
)
from molm3d_core.retrieval.manifest import CURRENT_FILE, VERSIONS_DIR
from molm3d_core.retrieval.store import StoredItem

SOURCE = EmbeddingSource("test-model", "sha256:" + "a" * 64, trained=True)
ANN_CONFIGS = {
    "hnsw": IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=100, ef_search=64),
    "ivfpq": IndexConfig(kind="ivfpq", nlist=32, pq_m=8, nbits=8, nprobe=8, refine_factor=4),
}


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin when the cores are shared (10x slower here); tests use one."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute_force(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """items (N, V, E), queries (B, P, E) -> top-k (scores, positions) by max over all V x P dot products."""
    sim = np.einsum("nve,bpe->bnvp", items, queries).max(axis=(2, 3))  # (B, N)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, top, 1), top


def test_flat_index_equals_brute_force_in_both_directions():
    rng = np.random.default_rng(0)
    molecules = unit(rng.normal(size=(300, 4, 16)))  # (N, Q, E)
    texts = unit(rng.normal(size=(200, 16)))  # (C, E)
    item_ids = np.arange(300) * 7 + 3  # sparse ids: rows map back through id // Q, not positions
    mol_index = VectorIndex(IndexConfig(kind="flat"), 16, 4)
    mol_index.add(item_ids, molecules)
    text_index = VectorIndex(IndexConfig(kind="flat"), 16, 1)
    text_index.add(np.arange(200), texts)

    # text -> molecule: max over each molecule's query tokens
    scores, ids = mol_index.search(texts, 20)
    want_scores, want_pos = brute_force(molecules, texts[:, None, :], 20)
    np.testing.assert_array_equal(ids, item_ids[want_pos])
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # molecule -> text: max over the query molecule's tokens
    scores, ids = text_index.search(molecules, 20)
    want_scores, want_pos = brute_force(texts[:, None, :], molecules, 20)
    np.testing.assert_array_equal(ids, want_pos)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # asking for more items than exist pads with -1 / -inf
    scores, ids = text_index.search(molecules[:2], 250)
    assert (ids[:, :200] >= 0).all() and (ids[:, 200:] == -1).all() and np.isneginf(scores[:, 200:]).all()


def test_flat_index_is_exact_when_one_molecule_fills_the_first_rows():
    """Near-identical query tokens put all V rows of a molecule first: the search must fetch more rows."""
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(100, 1, 16)))
    molecules = unit(base + 1e-3 * rng.normal(size=(100, 8, 16)))  # 8 almost equal tokens per molecule
    index = VectorIndex(IndexConfig(kind="flat"), 16, 8)
    index.add(np.arange(100), molecules)
    queries = unit(rng.normal(size=(10, 16)))
    _, ids = index.search(queries, 30)
    _, want = brute_force(molecules, queries[:, None, :], 30)
    np.testing.assert_array_equal(ids, want)


def _recall(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact_ids, strict=True)]))


@pytest.mark.parametrize("kind", sorted(ANN_CONFIGS))
def test_ann_recall_at_20_on_clustered_vectors(kind):
    """Clustered random unit vectors (64 unit centres in 32-d plus Gaussian noise of norm ~0.8, like
    embeddings of families of similar molecules): 4,000 rows as 1,000 molecules x 4 query tokens, 200
    queries from the same distribution."""
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(64, 32)))

    def sample(n: int) -> np.ndarray:
        return unit(centres[rng.integers(0, 64, n)] + 0.8 / np.sqrt(32) * rng.normal(size=(n, 32)))

    molecules, queries = sample(4000).reshape(1000, 4, 32), sample(200)
    exact = VectorIndex(IndexConfig(kind="flat"), 32, 4)
    exact.add(np.arange(1000), molecules)
    ann = VectorIndex(ANN_CONFIGS[kind], 32, 4)
    ann.add(np.arange(1000), molecules)
    assert _recall(ann.search(queries, 20)[1], exact.search(queries, 20)[1]) >= 0.95


@pytest.fixture(scope="module")
def qm9_embeddings(tiny_model) -> np.ndarray:
    """(700, 8, 16): the tiny model's real encoder on the first 700 QM9 DFT geometries."""
    import torch

    from molm3d_core.chem import collate, featurize_atoms
    from molm3d_core.data.qm9 import read_qm9

    feats = [featurize_atoms(list(m.symbols), np.array(m.coords)) for m in read_qm9(limit=700)]
    with torch.no_grad():
        emb = torch.cat([tiny_model.embed_molecules(collate(feats[i : i + 128])) for i in range(0, 700, 128)])
    return emb.numpy()


@pytest.mark.parametrize("kind", sorted(ANN_CONFIGS))
def test_ann_recall_at_20_on_real_encoder_embeddings(qm9_embeddings, kind):
    """The tiny fixture model's real encoder on 700 QM9 DFT geometries (no conformer generation: fast):
    600 indexed molecules x 8 query tokens = 4,800 rows of 16-d, queried with the 800 token vectors of
    the other 100. The untrained model's vectors are nearly degenerate (many scores tie to 1e-6), so a
    hit counts when its exact score reaches the exact 20th score (ties are interchangeable)."""
    emb = qm9_embeddings
    library, queries = emb[:600], emb[600:].reshape(-1, emb.shape[-1])
    config = ANN_CONFIGS[kind]
    if kind == "ivfpq":
        config = IndexConfig(kind="ivfpq", nlist=16, pq_m=8, nbits=8, nprobe=8, refine_factor=8)
    ann = VectorIndex(config, emb.shape[-1], 8)
    ann.add(np.arange(600), library)
    _, ids = ann.search(queries, 20)
    exact_scores, _ = brute_force(library, queries[:, None, :], 20)
    sim = np.einsum("nve,be->bnv", library, queries).max(-1)  # (B, N) exact
    got = np.take_along_axis(sim, ids, 1)
    assert (ids >= 0).all()
    assert float(np.mean(got >= exact_scores[:, -1:] - 1e-5)) >= 0.95


def test_ivfpq_with_too_few_vectors_says_so():
    index = VectorIndex(IndexConfig(kind="ivfpq", nlist=64, pq_m=4, nbits=8), 16, 1)
    index.add(np.arange(100), unit(np.random.default_rng(3).normal(size=(100, 16))))
    with pytest.raises(IndexConfigError, match="needs at least 256 vectors"):
        index.search(unit(np.ones((1, 16))), 5)
    with pytest.raises(IndexConfigError, match="must divide"):
        VectorIndex(IndexConfig(kind="ivfpq", pq_m=5), 16, 1)


def _create(folder, kind: str = "flat", n: int = 50, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A committed molecule index of `n` random items "m0".. with Q=4, E=16; returns its vectors and ids."""
    vectors = unit(np.random.default_rng(seed).normal(size=(n, 4, 16)))
    ids = [f"m{i}" for i in range(n)]
    with RetrievalIndex.create(folder, "molecules", IndexConfig(kind=kind), 16, 4, SOURCE) as index:
        index.add([StoredItem(-1, i, {"smiles": "C" * (j + 1)}) for j, i in enumerate(ids)], vectors, SOURCE)
    return vectors, ids


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_persist_load_round_trip(tmp_path, kind):
    vectors, ids = _create(tmp_path / "idx", kind)
    query = unit(np.random.default_rng(9).normal(size=(3, 16)))
    with RetrievalIndex.open(tmp_path / "idx") as index:
        hits = index.search(query, 5)
        assert len(index) == 50 and index.content == "molecules"
    _, pos = brute_force(vectors, query[:, None, :], 5)
    assert [[h.id for h in row] for row in hits] == [[ids[p] for p in row] for row in pos]
    assert hits[0][0].record == {"smiles": "C" * (pos[0][0] + 1)}
    assert [h.score for h in hits[0]] == sorted((h.score for h in hits[0]), reverse=True)
    manifest = json.loads((tmp_path / "idx" / VERSIONS_DIR / "1" / "manifest.json").read_text())
    assert manifest["index"]["kind"] == kind and manifest["embedding_dim"] == 16 and manifest["count"] == 50
    assert manifest["checkpoint"] == SOURCE.to_dict() and manifest["version"] == 1 and manifest["created"]
    assert (tmp_path / "idx" / CURRENT_FILE).read_text().strip() == "1"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_add_and_remove_are_visible_to_searches(tmp_path, kind):
    folder = tmp_path / "idx"
    vectors = unit(np.random.default_rng(4).normal(size=(300, 4, 16)))
    config = IndexConfig(kind=kind, nlist=4, pq_m=4, nbits=6, refine_factor=4 if kind == "ivfpq" else 0)
    with RetrievalIndex.create(folder, "molecules", config, 16, 4, SOURCE) as index:
        index.add([StoredItem(-1, f"m{i}", {}) for i in range(300)], vectors, SOURCE)
    probe = vectors[7, 0][None]  # a query that is exactly one of m7's token vectors
    with RetrievalIndex.edit(folder) as index:
        index.add([StoredItem(-1, "new", {"name": "added later"})], vectors[7:8], SOURCE)  # a twin of m7
    with RetrievalIndex.open(folder) as index:
        assert {h.id for h in index.search(probe, 2)[0]} == {"m7", "new"}
    with RetrievalIndex.edit(folder) as index:
        assert index.remove(["m7", "absent"]) == ["absent"]
    with RetrievalIndex.open(folder) as index:
        hits = index.search(probe, 10)[0]
        assert hits[0].id == "new" and "m7" not in {h.id for h in hits} and len(hits) == 10
        assert len(index) == 300 and read_manifest(folder).version == 3


def test_marked_deletions_are_compacted_away(tmp_path):
    """HNSW cannot delete: removed items are filtered, and the graph is rebuilt past compact_fraction."""
    folder = tmp_path / "idx"
    _create(folder, "hnsw", n=40)
    with RetrievalIndex.edit(folder) as index:
        index.remove([f"m{i}" for i in range(5)])  # 5 / 40 rows: below 25 %, marked only
    assert read_manifest(folder).deleted_rows == 20
    with RetrievalIndex.edit(folder) as index:
        index.remove([f"m{i}" for i in range(5, 15)])  # 15 / 40: rebuilt without them
    manifest = read_manifest(folder)
    assert (manifest.deleted_rows, manifest.rows, manifest.count) == (0, 100, 25)
    with RetrievalIndex.open(folder) as index:
        assert len({h.id for h in index.search(unit(np.ones((1, 16))), 40)[0]}) == 25


def test_adding_embeddings_of_another_checkpoint_is_refused(tmp_path, tiny_model):
    _create(tmp_path / "idx")
    other = EmbeddingSource("other-model", "sha256:" + "b" * 64, trained=True)
    with pytest.raises(EmbeddingMismatchError, match="refusing"), RetrievalIndex.edit(tmp_path / "idx") as index:
        index.add([StoredItem(-1, "x", {})], np.zeros((1, 4, 16), np.float32) + 0.25, other)
    assert read_manifest(tmp_path / "idx").version == 1  # the failed edit published nothing
    # The fingerprint follows the weights outside the LM.
    import torch

    before = weights_fingerprint(tiny_model)
    with torch.no_grad():
        tiny_model.graph_proj.bias[0] += 1.0
        changed = weights_fingerprint(tiny_model)
        tiny_model.graph_proj.bias[0] -= 1.0
    assert changed != before and weights_fingerprint(tiny_model) == before


SMILES = "CCO ethanol\nc1ccccc1 benzene\nCC(=O)O acetic_acid\nc1ccncc1 pyridine\n"


def test_interrupted_build_leaves_the_previous_index_usable(tmp_path, tiny_model, monkeypatch):
    from molm3d_core.checkpoints import CheckpointInfo
    from molm3d_core.pipeline import Predictor

    info = CheckpointInfo("tiny", trained=False)
    library = tmp_path / "lib.smi"
    library.write_text(SMILES)
    folder = tmp_path / "idx"
    report = build_index(folder, tiny_model, info, molecules=library, batch_size=2)
    assert (report.added, report.version) == (4, 1)
    before = RetrievalIndex.open(folder).search(tiny_model.embed_texts(["an alcohol"]).detach().numpy(), 4)

    calls = {"n": 0}
    real = Predictor.run_batch

    def crash_on_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash mid-build")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "run_batch", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        build_index(folder, tiny_model, info, molecules=library, batch_size=2, config=IndexConfig(kind="hnsw"))
    monkeypatch.undo()
    # A crash inside the commit, after the new version's files are written, before CURRENT switches.
    more = tmp_path / "more.smi"
    more.write_text("CCN ethylamine\n")
    monkeypatch.setattr("molm3d_core.retrieval.folder.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        update_index(folder, tiny_model, info, molecules=more)
    monkeypatch.undo()

    assert read_manifest(folder).version == 1 and read_manifest(folder).config.kind == "flat"
    after = RetrievalIndex.open(folder).search(tiny_model.embed_texts(["an alcohol"]).detach().numpy(), 4)
    assert [(h.id, h.score) for h in after[0]] == [(h.id, h.score) for h in before[0]]
    # The next writer clears what the interrupted ones left and publishes after the stray version folder.
    report = update_index(folder, tiny_model, info, molecules=more)
    assert (report.added, report.version) == (1, 3)
    versions = sorted(p.name for p in (folder / VERSIONS_DIR).iterdir())
    assert versions == ["1", "3"]  # the live and the previous live version; no stray or staging folders


def test_readers_and_bad_records(tmp_path):
    csv_file = tmp_path / "lib.csv"
    csv_file.write_text("id,smiles,name\nA1,CCO,ethanol\nB2,C1CC(,broken\n,c1ccccc1,benzene\n")
    items = list(read_molecule_library(csv_file))
    assert items[0].record.record_id == "A1" and items[0].fields == {"name": "ethanol"}
    assert items[1].record_id == "B2" and items[1].code == "invalid_smiles"
    assert items[2].record.record_id.endswith(":4")  # no id: file:line, as for SMILES files
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text('{"id": 1, "text": "an alcohol", "source": "x", "n": 3}\n{"id": "t2"}\nnot json\n\n')
    items = list(read_text_corpus(corpus))
    assert (items[0].id, items[0].fields) == ("1", {"source": "x"})
    assert [(s.record_id, s.code) for s in items[1:]] == [("t2", "missing_field"), (f"{corpus}:3", "invalid_json")]


def test_rerank_reorders_by_similarity_plus_matching_head(tmp_path, tiny_model):
    from molm3d_core.checkpoints import CheckpointInfo

    info = CheckpointInfo("tiny", trained=False)
    corpus = tmp_path / "texts.jsonl"
    texts = ["an alcohol", "an aromatic ring", "a carboxylic acid", "an amine", "a gas", "a salt"]
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    build_index(tmp_path / "idx", tiny_model, info, texts=corpus)
    retriever = Retriever(RetrievalIndex.open(tmp_path / "idx"), tiny_model, info)
    plain = retriever.search(smiles="CCO", k=6)
    reranked = retriever.search(smiles="CCO", k=3, rerank=True, rerank_top=6)
    assert len(reranked) == 3 and all(h.match_score is not None for h in reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    by_id = {h.id: h.similarity for h in plain}
    for h in reranked:
        assert h.score == pytest.approx(by_id[h.id] + h.match_score, abs=1e-5)
    with pytest.raises(ValueError, match="holds texts"):
        retriever.search(text="an alcohol")


def test_full_set_evaluation_through_the_index_matches_the_similarity_matrix():
    rng = np.random.default_rng(5)
    mol = unit(rng.normal(size=(150, 4, 16)))
    txt = unit(mol.mean(1) + 0.6 * rng.normal(size=(150, 16)))  # partners are similar, not identical
    sim = np.einsum("nqe,ce->ncq", mol, txt).max(-1)
    match_table = rng.normal(size=(150, 150))

    def match(m, t):
        return match_table[m, t]

    full = index_retrieval_scores(mol, txt, match, top_k=32)
    assert full["full"] == retrieval_scores(sim)
    assert full["full_rerank"] == reranked_retrieval_scores(sim, match, top_k=32)
    assert 0 < full["full"].m2t_acc < 100 and full["full_rerank"] != full["full"]
