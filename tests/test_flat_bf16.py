"""Exact scans from a bfloat16 copy (a server's held flat index, searched with ``index.search``): the same top k
as the float32 scan, with and without restrictions, when near-ties outnumber the kept candidates, and when fewer rows
than k are allowed; the copy is made only where this CPU multiplies bfloat16 faster (``with_bf16``)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from featurestore.query import index as faiss_index

torch = pytest.importorskip("torch")  # the default install has it (sentence-transformers' torch)


def _held(n: int = 30_000, d: int = 384, seed: int = 0) -> tuple[faiss.IndexFlat, faiss_index.VectorArray]:
    rng = np.random.default_rng(seed)
    x = faiss_index.normalize(rng.standard_normal((n, d), dtype=np.float32))
    x[500:900] = x[7]  # 400 copies of one row: near-ties beyond the kept candidates for a query at it
    index = faiss.IndexFlatIP(d)
    index.add(x)
    array = np.array(faiss_index.flat_vectors(index))
    return index, faiss_index.VectorArray(array, torch.from_numpy(array).to(torch.bfloat16))


def _queries(held: faiss_index.VectorArray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = held.array
    q = np.concatenate(
        [
            x[rng.integers(0, len(x), 6)] + 0.3 * rng.standard_normal((6, x.shape[1]), dtype=np.float32),
            rng.standard_normal((8, x.shape[1]), dtype=np.float32),
            x[[7, 3]],
        ]
    )
    return faiss_index.normalize(q)


def _scan(
    index: faiss.IndexFlat,
    vectors: faiss_index.VectorArray,
    q: np.ndarray,
    allowed: np.ndarray | list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top 10 of ``index.search`` over a flat index held as ``vectors``: from their bfloat16 copy when they have
    one, else by the float32 scan."""
    opened = faiss_index.OpenedIndex(index, index.ntotal, "loaded", vectors=vectors)
    return faiss_index.search(opened, q, 10, allowed)


def _per_query(groups: list[tuple[np.ndarray | None, list[int]]], n_queries: int) -> list[np.ndarray | None]:
    """(restriction, query numbers) groups as ``search``'s one restriction a query (the same object for a group)."""
    allowed: list[np.ndarray | None] = [None] * n_queries
    for restriction, queries in groups:
        for i in queries:
            allowed[i] = restriction
    return allowed


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], x: np.ndarray, q: np.ndarray) -> None:
    """The same top k: equal scores in order (to float32 rounding), and each row's own score its listed one
    (rows with equal scores may come in either order)."""
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    for i in range(len(q)):
        for s, r in zip(b[0][i], b[1][i]):
            if r >= 0:
                assert float(x[r] @ q[i]) == pytest.approx(float(s), abs=1e-5)
        assert (a[1][i] < 0).tolist() == (b[1][i] < 0).tolist()


@pytest.mark.parametrize("restriction", ["none", "half", "groups", "few"])
def test_a_bfloat16_scan_gives_the_float32_top_k(restriction: str) -> None:
    index, held = _held()
    q = _queries(held)
    n = index.ntotal
    rng = np.random.default_rng(2)
    allowed: object = {
        "none": None,
        "half": np.sort(rng.choice(n, n // 2 + 100, replace=False)),
        "groups": [
            (np.sort(rng.choice(n, 3000, replace=False)), [0, 1, 2, 14]),
            (None, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15]),
        ],
        "few": [(np.array([3, 7, 11]), list(range(8))), (None, list(range(8, 16)))],
    }[restriction]
    if isinstance(allowed, list):
        allowed = _per_query(allowed, len(q))
    plain = faiss_index.VectorArray(held.array)
    want = _scan(index, plain, q, allowed)
    got = _scan(index, held, q, allowed)
    _same(want, got, held.array, q)
    if restriction != "half":  # the query at stored row 3, which the other restrictions allow it
        assert (got[1][15] >= 0).all() and got[0][15][0] == pytest.approx(1.0, abs=1e-5)
    if restriction == "few":
        assert sorted(got[1][0][:3].tolist()) == [3, 7, 11] and (got[1][0][3:] == -1).all()


def _planted(
    scores: list[float], n_queries: int, first: int, seed: int
) -> tuple[np.ndarray, faiss.IndexFlat, faiss_index.VectorArray, faiss_index.VectorArray]:
    """Random queries, and for query i rows ``first + len(scores) * i + j`` whose score against it is
    ``scores[j]``, among ``_held``'s rows: (queries, the index, its float32 and its bfloat16 held vectors)."""
    _, held = _held()
    rng = np.random.default_rng(seed)
    q = faiss_index.normalize(rng.standard_normal((n_queries, 384), dtype=np.float32))
    x = held.array.copy()
    for i in range(n_queries):
        for j, c in enumerate(scores):
            noise = rng.standard_normal(x.shape[1]).astype(np.float32)
            noise -= (noise @ q[i]) * q[i]
            x[first + len(scores) * i + j] = c * q[i] + np.sqrt(1 - c * c) * noise / np.linalg.norm(noise)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return q, index, faiss_index.VectorArray(x), faiss_index.VectorArray(x, torch.from_numpy(x).to(torch.bfloat16))


def test_the_margin_is_what_makes_it_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """For each of 16 queries, 40 rows score 5e-6 apart around a midpoint between two bfloat16 values
    (0.99805): rounding the factors to bfloat16 moves a score by ~1e-4, so which of the two values each row
    gets is noise, and only the float32 re-scoring of every row within the error margin finds the true top
    10. Without the rounding part of the margin the scan keeps wrong ones (6-9 of the 16 queries here)."""
    mid = 1 - 2.0**-9  # halfway between bfloat16 values 1 - 2^-8 and 1
    q, index, plain, held = _planted([mid + 5e-6 * (20 - j) for j in range(40)], 16, 1000, seed=5)
    x = plain.array
    want = _scan(index, plain, q)
    assert [sorted(r) for r in want[1].tolist()] == [list(range(1000 + 40 * i, 1010 + 40 * i)) for i in range(16)]
    got = _scan(index, held, q)
    _same(want, got, x, q)
    assert got[1].tolist() == want[1].tolist()
    monkeypatch.setattr(faiss_index, "BF16_ERROR", 0.0)
    lossy = _scan(index, held, q)
    assert [sorted(r) for r in lossy[1].tolist()] != [sorted(r) for r in want[1].tolist()]


def test_the_copy_is_made_only_where_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    x = faiss_index.normalize(np.random.default_rng(3).standard_normal((4096, 64), dtype=np.float32))
    monkeypatch.setattr(faiss_index, "BF16_MIN_GAIN", 1e9)
    assert faiss_index.VectorArray(x).with_bf16().bf16 is None  # 4096 x 64 values: too few to consider
    monkeypatch.setattr(faiss_index, "BF16_MIN_VALUES", 0)
    monkeypatch.setattr(faiss_index, "_cpu_multiplies_bf16", lambda: False)  # decided by the timed trial
    monkeypatch.setattr(faiss_index, "BF16_MIN_GAIN", 0.0)  # nothing is that fast
    assert faiss_index.VectorArray(x).with_bf16().bf16 is None
    monkeypatch.setattr(faiss_index, "BF16_MIN_GAIN", 1e9)  # anything is
    made = faiss_index.VectorArray(x).with_bf16()
    assert made.bf16 is not None and made.bf16.dtype == torch.bfloat16 and made.bf16.shape == x.shape
    assert np.abs(made.bf16.float().numpy() - x).max() <= 2.0**-8
    monkeypatch.setattr(faiss_index, "BF16_MIN_GAIN", 0.0)
    monkeypatch.setattr(faiss_index, "_cpu_multiplies_bf16", lambda: True)  # AVX-512 BF16 or AMX: no trial
    assert faiss_index.VectorArray(x).with_bf16().bf16 is not None


def test_the_cpu_flags_are_read() -> None:
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    flags = (
        next((line for line in info.read_text().splitlines() if line.startswith("flags")), "") if info.exists() else ""
    )
    assert faiss_index._cpu_multiplies_bf16() == ("avx512_bf16" in flags.split() or "amx_bf16" in flags.split())


def test_more_near_ties_than_kept_candidates_are_scanned_again_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,500 rows within 7.5e-3 of one score (more than the kept ``k + BF16_CANDIDATES``, all within the error
    margin of each other): the bfloat16 pass cannot tell which 10 are best, so those queries are scanned again
    in float32, and the answer is still the exact one."""
    assert 10 + faiss_index.BF16_CANDIDATES < 1500
    q, index, plain, held = _planted([0.9 + 5e-6 * j for j in range(1500)], 3, 2000, seed=9)
    want = _scan(index, plain, q)
    assert [sorted(r) for r in want[1].tolist()] == [list(range(3490 + 1500 * i, 3500 + 1500 * i)) for i in range(3)]
    scanned = []
    real = faiss_index._flat_blas
    monkeypatch.setattr(faiss_index, "_flat_blas", lambda *a, **kw: scanned.append(len(a[1])) or real(*a, **kw))
    got = faiss_index._flat_bf16(index, held, q, 10, None)
    assert got[1].tolist() == want[1].tolist() and scanned == [3]
