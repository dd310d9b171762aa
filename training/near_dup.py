"""Near-duplicate files by MinHash over token shingles, with LSH banding to find candidate pairs.

A file's signature is, for each of NUM_PERM hash functions, the least hash of its SHINGLE-token
windows; two signatures agree in a position with probability equal to the Jaccard similarity of
the two files' shingle sets. Signatures are computed where the tokens are (prepare's
datasets.map workers, so they are parallel and cached); `near_duplicates` then runs once over
all signatures. Everything is vectorised numpy; the only Python loop is one pass over files.
"""

from __future__ import annotations

import numpy as np

SHINGLE = 5  # tokens per shingle: long enough that shared shingles mean shared code, not shared syntax
NUM_PERM = 64  # hash functions; the Jaccard estimate's standard error is ~0.045 at 0.85
BANDS = 16  # LSH bands of NUM_PERM // BANDS rows: a pair at Jaccard 0.85 shares a band with p > 0.9999
THRESHOLD = 0.85  # estimated Jaccard at or above which the later file is a near-duplicate
SEED = 0x5EED
# A bucket keeps at most this many files to compare against: a band value that thousands of
# files share (tiny files with the same few shingles) must not make the pass quadratic.
MAX_BUCKET = 256

_U64 = np.uint64
_CHUNK = 4096  # shingles per block of the (NUM_PERM x shingles) product, to bound memory


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers (odd, so each is a bijection on 64-bit integers) and offsets of the hash family."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * _U64(2) + _U64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


_PERMUTATIONS = {(NUM_PERM, SEED): _permutations(NUM_PERM, SEED)}


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole word (wrapping arithmetic)."""
    z = z + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def shingle_hashes(ids, shingle: int = SHINGLE) -> np.ndarray:
    """One 64-bit hash per window of `shingle` consecutive token ids (one window if the text is shorter)."""
    ids = np.asarray(ids).astype(np.uint64)
    if len(ids) < shingle:
        ids = np.concatenate([ids, np.zeros(shingle - len(ids), dtype=np.uint64)]) if len(ids) else ids
    n = len(ids) - shingle + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = ids[:n].copy()
    for j in range(1, shingle):  # a polynomial in the tokens (order matters), then one full mix
        h = h * _U64(0x100000001B3) + ids[j:j + n]
    return _mix(h)


def minhash(ids, shingle: int = SHINGLE, num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray:
    """The (num_perm,) uint64 MinHash signature of a token sequence; all ones (max) for no tokens."""
    key = (num_perm, seed)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS[key] = _permutations(num_perm, seed)
    a, b = _PERMUTATIONS[key]
    signature = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    hashes = shingle_hashes(ids, shingle)
    for start in range(0, len(hashes), _CHUNK):
        block = a[:, None] * hashes[None, start:start + _CHUNK]  # (num_perm, chunk), wraps mod 2**64
        block += b[:, None]
        np.minimum(signature, block.min(axis=1), out=signature)
    return signature


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of agreeing signature positions; b may be one signature or a (n, num_perm) stack."""
    return (np.asarray(b) == np.asarray(a)).mean(axis=-1)


def _band_buckets(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) int64: an id per distinct band value, distinct across bands."""
    n, num_perm = signatures.shape
    if num_perm % bands:
        raise ValueError(f"{num_perm} hash functions do not split into {bands} bands")
    rows = num_perm // bands
    banded = np.ascontiguousarray(signatures.reshape(n, bands, rows))
    buckets = np.empty((n, bands), dtype=np.int64)
    offset = 0
    for band in range(bands):
        # each band's rows as one opaque value, so np.unique groups equal bands
        values = banded[:, band, :].view(np.dtype((np.void, rows * 8))).ravel()
        _, inverse = np.unique(values, return_inverse=True)
        buckets[:, band] = inverse.ravel() + offset
        offset += n
    return buckets


def near_duplicates(signatures: np.ndarray, threshold: float = THRESHOLD, bands: int = BANDS,
                    exempt: np.ndarray | None = None, max_bucket: int = MAX_BUCKET) -> np.ndarray:
    """For each row (in priority order), the earlier kept row it near-duplicates, else -1.

    Rows are visited in order; a row is a near-duplicate when its estimated Jaccard similarity
    with an earlier kept row that shares an LSH band is >= threshold. Exempt rows are kept
    whatever they match (a fixed validation set), but later rows are still compared with them.
    """
    signatures = np.asarray(signatures, dtype=np.uint64)
    n = len(signatures)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return duplicate_of
    buckets = _band_buckets(signatures, bands)
    # Only buckets with two or more members can hold a pair; the rest need no dictionary work.
    counts = np.bincount(buckets.ravel(), minlength=n * bands)
    shared = counts[buckets] > 1
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(shared.any(axis=1)).tolist():
        keys = buckets[i][shared[i]].tolist()
        candidates = {j for key in keys for j in members.get(key, ())}
        if candidates:
            others = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
            similarity = estimated_jaccard(signatures[i], signatures[others])
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold and not (exempt is not None and exempt[i]):
                duplicate_of[i] = others[best]
                continue
        for key in keys:
            bucket = members.setdefault(key, [])
            if len(bucket) < max_bucket:
                bucket.append(i)
    return duplicate_of
