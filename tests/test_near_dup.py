"""MinHash signatures and the LSH near-duplicate pass (training/near_dup.py)."""

from __future__ import annotations

import numpy as np

from gptui.training import near_dup
from gptui.training.near_dup import estimated_jaccard, minhash, near_duplicates, shingle_hashes


def tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, n).astype(np.uint16)


def edited(ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """ids with about `share` of its tokens replaced at random places."""
    rng = np.random.default_rng(seed)
    out = ids.copy()
    where = rng.random(len(ids)) < share
    out[where] = rng.integers(0, 50_000, int(where.sum()))
    return out


def true_jaccard(a, b, k=near_dup.SHINGLE) -> float:
    sa = set(map(tuple, np.lib.stride_tricks.sliding_window_view(a, k)))
    sb = set(map(tuple, np.lib.stride_tricks.sliding_window_view(b, k)))
    return len(sa & sb) / len(sa | sb)


def test_shingles_are_ordered_windows():
    ids = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint16)
    h = shingle_hashes(ids)
    assert h.dtype == np.uint64 and len(h) == 2
    assert shingle_hashes(ids[1:])[0] == h[1]  # the same window hashes the same wherever it is
    assert shingle_hashes(ids[::-1])[0] not in h  # order matters
    assert len(shingle_hashes(np.array([7, 8], dtype=np.uint16))) == 1  # a short file is one shingle
    assert len(shingle_hashes(np.array([], dtype=np.uint16))) == 0


def test_identical_near_identical_and_different():
    ids = tokens(3000, 0)
    sig = minhash(ids)
    assert sig.shape == (near_dup.NUM_PERM,) and sig.dtype == np.uint64
    assert estimated_jaccard(sig, minhash(ids.copy())) == 1.0
    near = edited(ids, 0.005, 1)  # a few edits: about 0.95 Jaccard
    assert estimated_jaccard(sig, minhash(near)) >= near_dup.THRESHOLD
    assert estimated_jaccard(sig, minhash(tokens(3000, 2))) < 0.1
    # the estimate tracks the true Jaccard similarity
    for share in (0.01, 0.05, 0.2):
        other = edited(ids, share, 3)
        assert abs(estimated_jaccard(sig, minhash(other)) - true_jaccard(ids, other)) < 0.15


def test_signatures_do_not_depend_on_chunking(monkeypatch):
    ids = tokens(10_000, 4)
    whole = minhash(ids)
    monkeypatch.setattr(near_dup, "_CHUNK", 7)
    assert np.array_equal(minhash(ids), whole)


def test_later_copy_goes_earlier_stays():
    base = [tokens(800, seed) for seed in range(6)]
    files = [base[0], base[1], edited(base[0], 0.003, 9), base[2], base[1], base[3], edited(base[4], 0.3, 5), base[4]]
    result = near_duplicates(np.stack([minhash(f) for f in files]))
    # 2 is a light edit of 0 and 4 a copy of 1; 6 is too different from 7 (and 7 comes later than 6)
    assert result.tolist() == [-1, -1, 0, -1, 1, -1, -1, -1]


def test_kept_rows_are_what_later_rows_compare_with():
    a = tokens(800, 0)
    files = [a, a, a]
    assert near_duplicates(np.stack([minhash(f) for f in files])).tolist() == [-1, 0, 0]


def test_exempt_rows_are_kept_but_still_remove_later_copies():
    a, b = tokens(600, 0), tokens(600, 1)
    sigs = np.stack([minhash(f) for f in (a, a, b, a)])
    exempt = np.array([True, True, False, False])
    assert near_duplicates(sigs, exempt=exempt).tolist() == [-1, -1, -1, 0]


def test_thousands_of_files_are_fast_and_find_planted_copies():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**63, size=(20_000, near_dup.NUM_PERM), dtype=np.uint64)
    sigs[15_000] = sigs[10]
    sigs[17_000, :60] = sigs[20, :60]  # 60 of 64 positions agree: 0.94
    sigs[18_000, :50] = sigs[30, :50]  # 50 of 64: 0.78, kept
    result = near_duplicates(sigs)
    assert np.flatnonzero(result >= 0).tolist() == [15_000, 17_000]
    assert result[15_000] == 10 and result[17_000] == 20
