"""`prepare` from directories of .py files: vet, deduplicate, split by file, tokenise, shard.

Reading, vetting and tokenising run in `datasets.map` worker processes (num_proc) and land in
a cache keyed by the file list (paths, sizes, modification times) and the options, so a second
run over unchanged input reuses the tokens instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core import __version__
from ..core.errors import GptuiError
from ..core.tokenizer import encode, get_encoding
from .packages import find_distributions
from .shards import PRETRAIN, TOKEN_DTYPE, check_output, read_manifest, save_array, staged_folder, write_manifest
from .sources import DUPLICATE, Candidate, find_python_files, read_source


# Bump when vetting or tokenisation changes, so stale caches are not reused.
PIPELINE_VERSION = 2  # 2: long_mean_line and low_alphanumeric filters


def _tokenise_files(batch: dict, roots: list[str], encoding: str, max_file_bytes: int) -> dict:
    """datasets.map worker: read, vet and tokenise a batch of files."""
    enc = get_encoding(encoding)
    out: dict[str, list] = {"reason": [], "sha256": [], "n_bytes": [], "ids": []}
    for root, path in zip(batch["root"], batch["path"]):
        text, reason, sha = read_source(os.path.join(roots[root], path), max_file_bytes)
        ids = encode(enc, text) if text is not None else []
        out["reason"].append(reason)
        out["sha256"].append(sha)
        out["n_bytes"].append(len(text.encode()) if text is not None else 0)
        out["ids"].append(np.asarray(ids, dtype=TOKEN_DTYPE))
    return out


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _tokenised(candidates: list[Candidate], roots: list[Path], encoding: str, max_file_bytes: int,
               num_proc: int, cache: Path, fingerprint: str):
    """A datasets.Dataset with one row per candidate: reason, sha256, n_bytes, ids."""
    import datasets

    features = datasets.Features({
        "root": datasets.Value("int32"),
        "path": datasets.Value("string"),
        "reason": datasets.Value("string"),
        "sha256": datasets.Value("string"),
        "n_bytes": datasets.Value("int64"),
        "ids": datasets.Sequence(datasets.Value("uint16")),
    })
    files = datasets.Dataset.from_dict({"root": [c.root for c in candidates], "path": [c.path for c in candidates]})
    # A worker per ~100 files at least: starting a process costs more than tokenising a few files.
    num_proc = max(1, min(num_proc, len(candidates) // 100))
    cache.mkdir(parents=True, exist_ok=True)
    return files.map(
        _tokenise_files,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"roots": [str(r) for r in roots], "encoding": encoding, "max_file_bytes": max_file_bytes},
        features=features,
        cache_file_name=str(cache / f"code-{fingerprint[:24]}.arrow"),
        new_fingerprint=fingerprint[:32],
        load_from_cache_file=True,
        desc="reading and tokenising",
    )


def _split(kept: list[int], shas: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split files (never tokens) into train/val. The order is a function of content and seed only."""
    order = sorted(kept, key=lambda i: shas[i])
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    n_val = int(round(val_fraction * len(order)))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return order[n_val:], order[:n_val]


def _write_split(folder: Path, name: str, ids_column, rows: list[int], eot: int, shard_tokens: int) -> list[dict]:
    """Concatenate the rows' tokens with <|endoftext|> after each; write shards cut at document ends."""
    if not rows:
        return []
    lists = ids_column.take(pa.array(rows, type=pa.int64())).combine_chunks()
    lengths = lists.value_lengths().to_numpy().astype(np.int64)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(TOKEN_DTYPE, copy=False)
    ends = np.cumsum(lengths)  # where each document's tokens end in `values`
    stream = np.insert(values, ends, eot).astype(TOKEN_DTYPE, copy=False)
    doc_ends = ends + np.arange(1, len(ends) + 1)  # ends in `stream`, separator included
    shards, start, doc = [], 0, 0
    while doc < len(doc_ends):
        # the last document that keeps this shard within shard_tokens (at least one document)
        last = max(doc, int(np.searchsorted(doc_ends, start + shard_tokens, side="right")) - 1)
        end = int(doc_ends[last])
        file = f"{name}-{len(shards):05d}.npy"
        save_array(folder / file, stream[start:end])
        shards.append({"file": file, "tokens": end - start, "documents": last - doc + 1})
        start, doc = end, last + 1
    return shards


def prepare_code(
    roots: list[Path],
    out: Path,
    encoding: str = "gpt2-code",
    val_fraction: float = 0.01,
    seed: int = 0,
    num_proc: int = 1,
    max_file_bytes: int = 1_000_000,
    shard_tokens: int = 100_000_000,
    force: bool = False,
    cache: Path | None = None,
) -> tuple[dict, bool]:
    """Build a pretraining folder at `out`. Returns (manifest, reused): reused when already up to date."""
    from ..core.paths import cache_dir

    started = time.time()
    roots = [Path(r).resolve() for r in roots]
    enc = get_encoding(encoding)
    candidates = find_python_files(roots)
    if not candidates:
        raise GptuiError(f"no .py files under {', '.join(map(str, roots))}")
    tokens_key = _fingerprint(PIPELINE_VERSION, encoding, max_file_bytes, [str(r) for r in roots],
                              [(c.root, c.path, c.size, c.mtime_ns) for c in candidates])
    out_key = _fingerprint(tokens_key, val_fraction, seed, shard_tokens)
    if check_output(out, out_key, force):
        return read_manifest(out, PRETRAIN), True

    ds = _tokenised(candidates, roots, encoding, max_file_bytes, num_proc, cache or cache_dir() / "prepare", tokens_key)
    table = ds.data.table
    meta = table.select(["reason", "sha256", "n_bytes"]).to_pydict()
    n_tokens = pc.list_value_length(table.column("ids")).to_numpy()

    skipped: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    kept: list[int] = []
    for i, (reason, sha) in enumerate(zip(meta["reason"], meta["sha256"])):
        if not reason and sha in seen:
            reason = DUPLICATE
        if reason:
            skipped[reason] += 1
            if len(examples[reason]) < 5:
                examples[reason].append(str(roots[candidates[i].root] / candidates[i].path))
            continue
        seen.add(sha)
        kept.append(i)
    if not kept:
        detail = ", ".join(f"{n} {r}" for r, n in skipped.most_common())
        raise GptuiError(f"no usable .py files under {', '.join(map(str, roots))} (skipped: {detail})")

    train, val = _split(kept, meta["sha256"], val_fraction, seed)
    with staged_folder(out) as tmp:
        splits = {}
        for name, rows in (("train", train), ("val", val)):
            shards = _write_split(tmp, name, table.column("ids"), rows, enc.eot_token, shard_tokens)
            splits[name] = {
                "files": len(rows),
                "tokens": int(sum(s["tokens"] for s in shards)),
                "bytes": int(sum(meta["n_bytes"][i] for i in rows)),
                "shards": shards,
            }
        # The held-out files by path and content hash: `prepare --mine --holdout` and the functional
        # check use them to keep validation code out of fine-tuning and to test on unseen code.
        splits["val"]["documents"] = [
            {"path": str(roots[candidates[i].root] / candidates[i].path), "sha256": meta["sha256"][i]} for i in val
        ]
        manifest = {
            "kind": PRETRAIN,
            "fingerprint": out_key,
            "source": {"type": "python_files", "roots": [str(r) for r in roots]},
            "encoding": encoding,
            "vocab_size": enc.n_vocab,
            "eot_token": enc.eot_token,
            "seed": seed,
            "val_fraction": val_fraction,
            "max_file_bytes": max_file_bytes,
            "files_found": len(candidates),
            "splits": splits,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": dict(sorted(examples.items())),
            "packages": _package_table(roots, candidates, kept, n_tokens, set(val)),
            "gptui_version": __version__,
            "seconds": round(time.time() - started, 1),
        }
        write_manifest(tmp, manifest)
    return manifest, False


def _package_table(roots: list[Path], candidates: list[Candidate], kept: list[int], n_tokens, val: set[int]) -> list[dict]:
    """Per root and top-level package: files and tokens kept, and its distribution where known."""
    stats: dict[tuple[int, str], dict] = {}
    for i in kept:
        c = candidates[i]
        entry = stats.setdefault((c.root, c.top_level), {"files": 0, "tokens": 0, "val_files": 0})
        entry["files"] += 1
        entry["tokens"] += int(n_tokens[i]) + 1  # + its <|endoftext|>
        entry["val_files"] += i in val
    dists = {index: find_distributions(root) for index, root in enumerate(roots)}
    table = []
    for (root, top), entry in sorted(stats.items()):
        row = {"root": str(roots[root]), "package": top, **entry}
        dist = dists[root].get(top)
        if dist:
            row.update(dist.to_dict())
        table.append(row)
    return table
