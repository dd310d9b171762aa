"""`prepare --hf`, `--mine` and `--from-log`: instruction data in python-codes-25k's schema, tokenised for SFT.

Three example shapes share the schema. An instruction row (instruction, input, output) is put in
core.prompt's template; a completion row has a non-empty `prompt` column (raw code, usually a
signature and docstring) and its `output` is what follows it (the body); a fill-in-the-middle
row also has a non-blank `suffix` (the code after the cursor), and its `output` is the middle,
laid out as pretraining's FIM documents and the app's prompts are:
<|fim_prefix|> prompt <|fim_suffix|> suffix <|fim_middle|> output <|endoftext|>. Rows without
`prompt`/`suffix` columns, or with them empty, are instruction rows, so python-codes-25k loads
unchanged.

Each example becomes prompt tokens followed by response tokens and <|endoftext|>. Per split the
folder holds one token array, a parallel loss mask (1 where the token is part of the response
and so is a training target) and document offsets.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core import __version__
from ..core.errors import GptuiError
from ..core.prompt import format_example
from ..core.tokenizer import encode, fim_ids, fim_prompt, get_encoding
from .exercises import exercise_pair, files_of, find_exercises
from .mine import COLUMNS, MAX_RESPONSE_TOKENS, add_row, mine_files
from ..core.atomic import staged_folder
from .shards import SFT, TOKEN_DTYPE, check_output, read_manifest, save_array, write_manifest
from .sources import find_python_files


FIM = "fill-in-the-middle"
REQUIRED_COLUMNS = ("output",)
PROMPT_COLUMNS = ("instruction", "prompt")  # at least one: instruction rows, completion rows, or both
SCHEMA = "instruction, input, output (text optional; or prompt, output, optional suffix for completion rows)"
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
PIPELINE_VERSION = 4
SHAPES = ("instruction", "completion", FIM)


def example_shape(prompt: str, suffix: str) -> str:
    """Which of SHAPES a row is: the app asks for fill-in-the-middle only with code after the cursor."""
    if prompt.strip():
        return FIM if suffix.strip() else "completion"
    return "instruction"


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_instructions(source: str, cache: Path):
    """A datasets.Dataset from a hub name or a local JSON/JSONL/Parquet file, columns checked."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_file():
            builder = LOCAL_FORMATS.get(path.suffix.lower())
            if builder is None:
                raise GptuiError(f"{path}: unsupported file type (use .json, .jsonl or .parquet)")
            if path.stat().st_size == 0:
                raise GptuiError(f"{path}: empty file")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache))
        elif path.exists() or path.suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/", "~")):
            raise GptuiError(f"{path}: no such file")
        else:
            ds = datasets.load_dataset(source, split="train", cache_dir=str(cache))
    except GptuiError:
        raise
    except Exception as e:  # datasets raises many types (network, parsing, missing dataset)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GptuiError(f"cannot load {source}: {first}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if not any(c in ds.column_names for c in PROMPT_COLUMNS):
        missing = ["instruction", *missing]
    if missing:
        found = ", ".join(ds.column_names) or "none"
        raise GptuiError(f"{source}: missing column(s) {', '.join(missing)} (found: {found}; expected {SCHEMA})")
    if len(ds) == 0:
        raise GptuiError(f"{source}: no examples")
    return ds


def _tokenise_examples(batch: dict, encoding: str) -> dict:
    """datasets.map worker: (instruction, input, output, prompt, suffix) -> prompt ids, response ids + <|endoftext|>."""
    enc = get_encoding(encoding)
    n = len(batch["output"])
    columns = [batch.get(name) or [""] * n for name in ("instruction", "input", "prompt", "suffix")]
    out: dict[str, list] = {"prompt_ids": [], "response_ids": [], "key": [], "shape": []}
    for instruction, input_, prompt, suffix, output in zip(*columns, batch["output"]):
        instruction, input_, prompt, suffix, output = (t or "" for t in (instruction, input_, prompt, suffix, output))
        shape = example_shape(prompt, suffix)
        if shape == "instruction" and not instruction.strip() or not output.strip():
            prompt_ids, response_ids = [], []  # marked empty; counted and dropped by the caller
        elif shape == FIM:  # the middle exactly as it went between prefix and suffix: no added newline
            prompt_ids, response_ids = fim_prompt(enc, prompt, suffix), encode(enc, output) + [enc.eot_token]
        else:
            prompt_text, response = format_example(instruction, input_, output, prompt)
            prompt_ids, response_ids = encode(enc, prompt_text), encode(enc, response) + [enc.eot_token]
        out["prompt_ids"].append(np.asarray(prompt_ids, dtype=TOKEN_DTYPE))
        out["response_ids"].append(np.asarray(response_ids, dtype=TOKEN_DTYPE))
        out["shape"].append(shape)
        parts = {"instruction": (instruction, input_, output), "completion": (prompt, output)}.get(
            shape, (prompt, suffix, output))
        out["key"].append(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32])
    return out


def _split(groups: list[str], val_fraction: float, seed: int) -> set[str]:
    """The groups (source files, or single examples) that go to validation."""
    unique = sorted(set(groups))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n_val = int(round(val_fraction * len(order)))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return set(order[:n_val])


def _flat(lists: pa.ChunkedArray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(all values, length per row) of the chosen rows of a list<uint16> column."""
    taken = lists.take(pa.array(rows, type=pa.int64())).combine_chunks()
    return taken.flatten().to_numpy(zero_copy_only=False), pc.list_value_length(taken).to_numpy().astype(np.int64)


def _scatter_positions(row_starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Destination of each value when row i's values go to row_starts[i], row_starts[i] + 1, ..."""
    firsts = np.cumsum(lengths) - lengths  # where each row's values begin in the flat array
    return np.repeat(row_starts - firsts, lengths) + np.arange(int(lengths.sum()))


def _write_split(folder: Path, name: str, table: pa.Table, rows: np.ndarray) -> dict:
    """Prompt then response tokens per example, end to end; the mask is 1 on response tokens."""
    prompt, prompt_len = _flat(table.column("prompt_ids"), rows)
    response, response_len = _flat(table.column("response_ids"), rows)
    lengths = prompt_len + response_len
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=TOKEN_DTYPE)
    mask = np.zeros(int(offsets[-1]), dtype=np.uint8)
    tokens[_scatter_positions(offsets[:-1], prompt_len)] = prompt
    response_at = _scatter_positions(offsets[:-1] + prompt_len, response_len)
    tokens[response_at] = response
    mask[response_at] = 1
    files = {k: f"{name}.{k}.npy" for k in ("tokens", "mask", "offsets")}
    save_array(folder / files["tokens"], tokens)
    save_array(folder / files["mask"], mask)
    save_array(folder / files["offsets"], offsets)
    shapes = Counter(table.column("shape").take(pa.array(rows, type=pa.int64())).to_pylist())
    return {
        "examples": len(lengths),
        "shapes": {shape: shapes[shape] for shape in SHAPES},
        "tokens": int(offsets[-1]),
        "response_tokens": int(mask.sum()),
        "max_example_tokens": int(lengths.max()) if len(lengths) else 0,
        "files": files,
    }


def prepare_sft(ds, source: dict, out: Path, encoding: str, val_fraction: float, seed: int, num_proc: int,
                force: bool, extra_files: dict[str, Path] | None = None) -> tuple[dict, bool]:
    """Tokenise an instruction dataset into `out`. Returns (manifest, reused)."""
    started = time.time()
    enc = get_encoding(encoding)
    key = _hash(PIPELINE_VERSION, ds._fingerprint, encoding)
    out_key = _hash(key, val_fraction, seed)
    if check_output(out, out_key, force):
        return read_manifest(out, SFT), True
    if fim_ids(enc) is None and "suffix" in ds.column_names and any(s and s.strip() for s in ds["suffix"]):
        raise GptuiError(f"{source.get('name') or source.get('db') or 'the data'} has fill-in-the-middle rows "
                         f"(a suffix column), and the {encoding} encoding has no FIM tokens: use gpt2-code")
    num_proc = max(1, min(num_proc, len(ds) // 2000))
    tokenised = ds.map(
        _tokenise_examples,
        batched=True,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"encoding": encoding},
        remove_columns=[c for c in ds.column_names if c != "source_file"],
        new_fingerprint=key[:32],
        desc="tokenising",
    )
    table = tokenised.data.table
    keys = table.column("key").to_pylist()
    response_len = pc.list_value_length(table.column("response_ids")).to_numpy()
    skipped: Counter = Counter()
    seen: set[str] = set()
    kept = []
    for i, (n, k) in enumerate(zip(response_len, keys)):
        if not n:
            skipped["empty"] += 1
        elif k in seen:
            skipped["duplicate"] += 1
        else:
            seen.add(k)
            kept.append(i)
    if not kept:
        raise GptuiError(f"{source.get('name') or source.get('roots')}: no usable examples ({dict(skipped)})")
    # Mined pairs split by source file, so a class and its own methods never straddle the split.
    by_file = "source_file" in table.column_names
    group_of = table.column("source_file").to_pylist() if by_file else keys
    groups = [group_of[i] for i in kept]
    val_groups = _split(groups, val_fraction, seed)
    with staged_folder(out) as tmp:
        splits = {}
        for name, in_val in (("train", False), ("val", True)):
            rows = np.array([i for i, g in zip(kept, groups) if (g in val_groups) == in_val], dtype=np.int64)
            splits[name] = _write_split(tmp, name, table, rows)
        for name, path in (extra_files or {}).items():
            (tmp / name).write_bytes(path.read_bytes())
        manifest = {
            "kind": SFT,
            "fingerprint": out_key,
            "source": source,
            "encoding": encoding,
            "vocab_size": enc.n_vocab,
            "eot_token": enc.eot_token,
            "seed": seed,
            "val_fraction": val_fraction,
            "split_by": "source_file" if by_file else "example",
            "examples_found": len(ds),
            "splits": splits,
            "skipped": dict(sorted(skipped.items())),
            "gptui_version": __version__,
            "seconds": round(time.time() - started, 1),
        }
        write_manifest(tmp, manifest)
    return manifest, False


def mine_to_jsonl(roots: list[Path], cache: Path, num_proc: int, max_file_bytes: int,
                  exclude_sha256: frozenset = frozenset(), encoding: str = "gpt2-code") -> tuple[Path, int]:
    """Mine pairs from every .py file and exercism exercise under roots into a cached JSONL file; (path, files read).

    Files whose content hash is in exclude_sha256 (a pretraining run's held-out split) are skipped.
    `encoding` measures responses against mine.MAX_RESPONSE_TOKENS.
    """
    import datasets

    roots = [Path(r).resolve() for r in roots]
    candidates = find_python_files(roots)
    exercises = find_exercises(roots)
    if not candidates and not exercises:
        raise GptuiError(f"no .py files under {', '.join(map(str, roots))}")
    exercise_files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for e in exercises for p in files_of(e)]
    key = _hash(PIPELINE_VERSION, max_file_bytes, [str(r) for r in roots], encoding, MAX_RESPONSE_TOKENS,
                [(c.root, c.path, c.size, c.mtime_ns) for c in candidates], exercise_files, sorted(exclude_sha256))
    cache.mkdir(parents=True, exist_ok=True)
    jsonl = cache / f"mined-{key[:24]}.jsonl"
    if not jsonl.exists():
        rows: dict[str, list] = {c: [] for c in COLUMNS}
        for folder in exercises:
            pair, _why = exercise_pair(folder, exclude_sha256)
            if pair:
                solution = next(p for p in files_of(folder) if p.parent.name == ".meta")
                add_row(rows, pair, str(solution))
        mined = datasets.Dataset.from_dict(rows) if rows["output"] else None
        if candidates:
            files = datasets.Dataset.from_dict({"root": [c.root for c in candidates],
                                                "path": [c.path for c in candidates]})
            num_proc = max(1, min(num_proc, len(candidates) // 100))
            pairs = files.map(
                mine_files,
                batched=True,
                batch_size=32,
                num_proc=num_proc if num_proc > 1 else None,
                fn_kwargs={"roots": [str(r) for r in roots], "max_file_bytes": max_file_bytes,
                           "exclude_sha256": exclude_sha256, "encoding": encoding},
                remove_columns=["root", "path"],
                new_fingerprint=key[:32],
                desc="mining docstrings",
            )
            mined = datasets.concatenate_datasets([mined, pairs]) if mined is not None and len(pairs) else (
                pairs if mined is None else mined)
        if mined is None or len(mined) == 0:
            raise GptuiError(f"no documented functions or classes under {', '.join(map(str, roots))}")
        partial = jsonl.with_suffix(".partial")
        mined.to_json(str(partial), lines=True, force_ascii=False)
        partial.replace(jsonl)
    return jsonl, len(candidates)
