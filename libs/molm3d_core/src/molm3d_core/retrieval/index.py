"""FAISS inner-product search over items that own one or more unit vectors.

A molecule is Q query-token vectors and a text one vector; an item's score against a query vector is the
max over its vectors, and against a query of P vectors (a molecule) the max over all P x V pairs, as in
`MoLM3D.similarity`. Each vector is a FAISS row with the int64 id `item_id * V + j`, so rows map back to
items without a table. A search asks FAISS for k x V rows (enough for k distinct items even when one
item fills V of them), keeps each item's first (= best) row, and asks again with twice as many rows for
the queries that still lack k live items, so the "flat" kind returns exactly the brute-force top k.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from .config import IndexConfig, IndexConfigError

log = logging.getLogger(__name__)

VECTORS_FILE = "vectors.faiss"
DELETED_FILE = "deleted.npy"
_GPU_MAX_K = 2048  # FAISS GPU k-selection limit; larger searches run on the CPU copy


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a CUDA device."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus and hasattr(faiss, "StandardGpuResources") and get_num_gpus() > 0)


def _new_faiss_index(config: IndexConfig, dim: int) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if config.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        inner.hnsw.efConstruction = config.ef_construction
    else:
        inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, config.nlist, config.pq_m, config.nbits, ip)
        if config.refine_factor:
            inner = faiss.IndexRefineFlat(inner)
    return faiss.IndexIDMap2(inner)


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and the ones it wraps, outermost first (IDMap2 -> [Refine ->] HNSW/IVFPQ/Flat)."""
    out = [faiss.downcast_index(index)]
    while True:
        last = out[-1]
        if isinstance(last, faiss.IndexIDMap2 | faiss.IndexIDMap):
            out.append(faiss.downcast_index(last.index))
        elif isinstance(last, faiss.IndexRefine):
            out.append(faiss.downcast_index(last.base_index))
        else:
            return out


def _first_k_items(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (n, m) items sorted best first: the first k distinct valid items (-1 = invalid).

    Returns scores (n, k), items (n, k) padded with -inf / -1, and the count found per row.
    """
    order = np.argsort(items, axis=1, kind="stable")  # equal items keep their best-first order
    sorted_items = np.take_along_axis(items, order, 1)
    first_sorted = np.ones_like(sorted_items, dtype=bool)
    first_sorted[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    first = np.zeros_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)
    valid = first & (items >= 0)
    pick = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # positions of valid entries, in order
    ok = np.take_along_axis(valid, pick, 1)
    out_items = np.where(ok, np.take_along_axis(items, pick, 1), -1)
    out_scores = np.where(ok, np.take_along_axis(scores, pick, 1), -np.inf).astype(np.float32)
    if out_items.shape[1] < k:  # fewer than k columns in total
        pad = k - out_items.shape[1]
        out_items = np.pad(out_items, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_scores, out_items, valid.sum(1)


class VectorIndex:
    """Items of `vectors_per_item` (V) vectors of size `dim` in a FAISS index chosen by `config`."""

    def __init__(self, config: IndexConfig, dim: int, vectors_per_item: int, *, _index: faiss.Index | None = None,
                 _deleted: set[int] | None = None) -> None:  # fmt: skip
        config.check_dim(dim)
        if vectors_per_item < 1:
            raise IndexConfigError(f"vectors_per_item must be >= 1, got {vectors_per_item}")
        self.config, self.dim, self.vectors_per_item = config, dim, vectors_per_item
        self.index = _index if _index is not None else _new_faiss_index(config, dim)
        # Items removed by marking (HNSW, refined IVF-PQ): still FAISS rows, never returned.
        self.deleted: set[int] = _deleted or set()
        self._pending_rows: list[np.ndarray] = []  # IVF-PQ rows waiting for enough vectors to train on
        self._pending_vectors: list[np.ndarray] = []
        self._gpu_index: faiss.Index | None = None
        self._gpu_resources = None
        self.use_gpu = self._resolve_gpu()
        self.set_search_params()

    # -- configuration ---------------------------------------------------------------------------------

    def _resolve_gpu(self) -> bool:
        device = self.config.device
        if device == "cpu" or (device == "auto" and (self.config.kind == "hnsw" or not gpu_available())):
            return False
        if self.config.kind == "hnsw":
            raise IndexConfigError("device='gpu': FAISS has no GPU HNSW; use kind flat or ivfpq, or device auto/cpu")
        if not gpu_available():
            raise IndexConfigError("device='gpu' but FAISS has no GPU support here (faiss-cpu or no CUDA device)")
        return True

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None,
                          refine_factor: int | None = None) -> None:  # fmt: skip
        """Apply (and optionally override) the query-time parameters of the config."""
        if ef_search is not None:
            self.config.ef_search = ef_search
        if nprobe is not None:
            self.config.nprobe = nprobe
        if refine_factor is not None:
            self.config.refine_factor = refine_factor
        layers = _layers(self.index)
        has_refine = any(isinstance(layer, faiss.IndexRefine) for layer in layers)
        if self.config.refine_factor and not has_refine:
            raise IndexConfigError("refine_factor > 0 needs an ivfpq index built with refine_factor > 0")
        for layer in layers:
            if isinstance(layer, faiss.IndexHNSW):
                layer.hnsw.efSearch = self.config.ef_search
            elif isinstance(layer, faiss.IndexIVF):
                layer.nprobe = self.config.nprobe
            elif isinstance(layer, faiss.IndexRefine):
                layer.k_factor = float(max(1, self.config.refine_factor))
        self._gpu_index = None

    @property
    def removes_in_place(self) -> bool:
        """Whether FAISS can delete rows of this kind (flat, unrefined IVF-PQ); otherwise items are marked."""
        return not any(isinstance(layer, faiss.IndexHNSW | faiss.IndexRefine) for layer in _layers(self.index))

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def num_rows(self) -> int:
        """FAISS rows, marked-deleted ones and rows waiting for training included."""
        return int(self.index.ntotal) + sum(len(r) for r in self._pending_rows)

    @property
    def num_deleted_rows(self) -> int:
        return len(self.deleted) * self.vectors_per_item

    @property
    def num_items(self) -> int:
        return self.num_rows // self.vectors_per_item - len(self.deleted)

    # -- add / remove ----------------------------------------------------------------------------------

    def _row_ids(self, item_ids: np.ndarray) -> np.ndarray:
        v = self.vectors_per_item
        return (item_ids[:, None] * v + np.arange(v, dtype=np.int64)).reshape(-1)

    def add(self, item_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add items: ids (N,) int64 >= 0, never used before; vectors (N, V, dim) (or (N, dim) when V = 1)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 2 and self.vectors_per_item == 1:
            x = x[:, None, :]
        expected = (len(ids), self.vectors_per_item, self.dim)
        if x.shape != expected:
            raise ValueError(f"vectors must have shape {expected} (items, vectors per item, dim), got {x.shape}")
        if len(ids) and ids.min() < 0:
            raise ValueError("item ids must be >= 0")
        if not np.isfinite(x).all():
            raise ValueError("vectors hold NaN or infinite values")
        if self.deleted.intersection(ids.tolist()):
            raise ValueError("item ids of removed items cannot be reused")
        rows, flat = self._row_ids(ids), np.ascontiguousarray(x.reshape(-1, self.dim))
        self._gpu_index = None
        if self.is_trained:
            self.index.add_with_ids(flat, rows)
            return
        self._pending_rows.append(rows)
        self._pending_vectors.append(flat)
        if self.num_rows - self.index.ntotal >= self.config.train_vectors:
            self.train()

    def train(self) -> None:
        """Train IVF-PQ on the vectors added so far and index them; no-op when already trained."""
        if self.is_trained:
            return
        n = self.num_rows - self.index.ntotal
        if n < self.config.min_train_vectors:
            c = self.config
            raise IndexConfigError(
                f"ivfpq (nlist={c.nlist}, nbits={c.nbits}) needs at least {c.min_train_vectors} vectors to train, "
                f"got {n}: use kind flat or hnsw for a collection this small, or lower nlist/nbits"
            )
        rows, flat = np.concatenate(self._pending_rows), np.concatenate(self._pending_vectors)
        self.index.train(flat)
        self.index.add_with_ids(flat, rows)
        self._pending_rows, self._pending_vectors = [], []
        self._gpu_index = None

    def remove(self, item_ids: np.ndarray) -> None:
        """Remove items (their ids must be present: the caller keeps the id registry)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return
        rows = self._row_ids(ids)
        if self._pending_rows:
            keep = [~np.isin(r, rows) for r in self._pending_rows]
            self._pending_rows = [r[k] for r, k in zip(self._pending_rows, keep, strict=True)]
            self._pending_vectors = [v[k] for v, k in zip(self._pending_vectors, keep, strict=True)]
        if self.removes_in_place:
            self.index.remove_ids(rows)
        elif self.is_trained:
            self.deleted.update(ids.tolist())
        self._gpu_index = None

    @property
    def needs_compaction(self) -> bool:
        return self.num_deleted_rows > self.config.compact_fraction * max(1, self.index.ntotal)

    def compact(self) -> None:
        """Rebuild the FAISS index from the rows of live items (drops marked-deleted rows); keeps training."""
        if not self.deleted:
            return
        inner = _layers(self.index)[1]
        rows = faiss.vector_to_array(faiss.downcast_index(self.index).id_map)  # (ntotal,) in storage order
        vectors = inner.reconstruct_n(0, self.index.ntotal)  # (ntotal, dim), exact for HNSW and refine
        live = ~np.isin(rows // self.vectors_per_item, np.fromiter(self.deleted, dtype=np.int64))
        fresh = faiss.clone_index(self.index)
        fresh.reset()
        fresh.add_with_ids(np.ascontiguousarray(vectors[live]), rows[live])
        self.index, self.deleted = fresh, set()
        self.set_search_params()

    # -- search ----------------------------------------------------------------------------------------

    def _searcher(self, k: int) -> faiss.Index:
        if not self.use_gpu or k > _GPU_MAX_K:
            return self.index
        if self._gpu_index is None:
            try:
                self._gpu_resources = self._gpu_resources or faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
            except RuntimeError as err:  # e.g. GPU out of memory, or a layout FAISS cannot clone
                if self.config.device == "gpu":
                    raise
                log.warning("FAISS GPU search unavailable (%s); searching on the CPU", err)
                self.use_gpu = False
                return self.index
        return self._gpu_index

    def _search_vectors(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live items per single query vector (n, dim): scores (n, k), item ids (n, k)."""
        n, total = len(x), int(self.index.ntotal)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        items = np.full((n, k), -1, dtype=np.int64)
        if total == 0:
            return scores, items
        deleted = np.fromiter(self.deleted, dtype=np.int64) if self.deleted else None
        live_fraction = max(1e-3, 1.0 - self.num_deleted_rows / total)
        fetch = min(total, int(np.ceil(k * self.vectors_per_item / live_fraction)))
        todo = np.arange(n)
        while len(todo):
            d, rows = self._searcher(fetch).search(np.ascontiguousarray(x[todo]), fetch)
            found = np.where(rows >= 0, rows // self.vectors_per_item, -1)
            if deleted is not None:
                found = np.where(np.isin(found, deleted), -1, found)
            s, i, count = _first_k_items(found, d, k)
            done = (count >= k) | (fetch >= total)
            scores[todo[done]], items[todo[done]] = s[done], i[done]
            todo, fetch = todo[~done], min(total, 2 * fetch)
        return scores, items

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query, best first: scores (B, k) float32 and item ids (B, k) int64.

        `queries` is (B, dim) (texts) or (B, P, dim) (molecules: the max over the P query vectors).
        Missing results (fewer than k live items) are -inf / -1.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.train()  # an IVF-PQ index still buffering trains now (or says why it cannot)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 2:
            q = q[:, None, :]
        if q.ndim != 3 or q.shape[-1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}) or (B, P, {self.dim}), got {q.shape}")
        b, p, _ = q.shape
        scores, items = self._search_vectors(q.reshape(b * p, self.dim), k)
        if p == 1:
            return scores, items
        # An item in the overall top k is in the top k of the query vector that gives its max, with
        # that max as its score there; so the best-first union over the P lists is exact.
        scores, items = scores.reshape(b, p * k), items.reshape(b, p * k)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, items = np.take_along_axis(scores, order, 1), np.take_along_axis(items, order, 1)
        scores, items, _ = _first_k_items(items, scores, k)
        return scores, items

    # -- persistence -----------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write `vectors.faiss` and `deleted.npy` into `folder` (training first if still buffering)."""
        self.train()
        folder = Path(folder)
        faiss.write_index(self.index, str(folder / VECTORS_FILE))
        np.save(folder / DELETED_FILE, np.array(sorted(self.deleted), dtype=np.int64))

    @classmethod
    def load(cls, folder: str | Path, config: IndexConfig, dim: int, vectors_per_item: int) -> VectorIndex:
        folder = Path(folder)
        index = faiss.read_index(str(folder / VECTORS_FILE))
        if index.d != dim:
            raise ValueError(f"{folder / VECTORS_FILE}: dimension {index.d}, the manifest says {dim}")
        deleted = set(np.load(folder / DELETED_FILE).tolist()) if (folder / DELETED_FILE).exists() else set()
        return cls(config, dim, vectors_per_item, _index=index, _deleted=deleted)
