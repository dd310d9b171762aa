"""`gptui bench`: the table to read before choosing a backend, measured on this machine in one run.

Per backend: validation loss and perplexity, size, time to first token for a long prompt,
decode tokens/s at batch 1, and the ratio to Hugging Face generate on the same weights. Peers
(Hugging Face generate fp32; CTranslate2 int8 on the Hugging Face copy) run in the same command
when installed (`pip install 'gptui[bench]'`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
from pathlib import Path

import click

from ..core.errors import fail_cleanly

DEFAULT_BACKENDS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")


def _machine(threads: int) -> dict:
    import onnxruntime
    import torch

    from ..core.benchmark import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_bench(model: str | None, backends: list[str], threads: int, prompt_tokens: int, new_tokens: int, runs: int,
              eval_dirs: list[Path], eval_tokens: int, peers: bool, log=lambda message: None, cli: bool = False) -> dict:
    """Measure `backends` (and the peers) on the model; log(message) hears progress.

    cli: also time each backend through real `gptui` processes given the same prompt, in the same
    turns (tui.peers.CliProcess), and report them beside the in-process figures.
    """
    import torch

    from ..core import benchmark as bm
    from ..core.backends import load_backend
    from ..core.backends.contract import LoadOptions
    from ..core.checkpoint import Checkpoint
    from . import peers
    from ..core.registry import resolve
    from ..core.tokenizer import get_encoding

    torch.set_num_threads(threads)
    folder = resolve(model)
    ckpt = Checkpoint.open(folder)
    config, encoding_name = ckpt.config, ckpt.encoding
    encoding = get_encoding(encoding_name)
    text_ids = bm.code_tokens(eval_dirs or [bm.stdlib_dir()], encoding_name, max(eval_tokens, prompt_tokens))
    prompt = text_ids[:prompt_tokens]
    loss_windows = bm.windows(text_ids[:eval_tokens], config.block_size) if eval_tokens else []
    # Load everything first, score the loss, then time the engines in turns (core.benchmark.interleaved).
    engines, info = {}, {}
    for name in backends:
        log(f"{name}: loading")
        backend = load_backend(name, folder, LoadOptions(threads=threads))
        loss = bm.validation_loss(backend, loss_windows)[0] if loss_windows else None
        engines[backend.name] = functools.partial(bm.backend_run, backend, encoding, prompt, new_tokens)
        info[backend.name] = (backend.nbytes, loss)
    processes = {}
    if cli:
        prompt_text = encoding.decode(prompt)
        for name in backends:
            processes[name] = peers.CliProcess(folder, name, prompt_text, new_tokens, threads)
            engines[f"{name} (cli)"] = processes[name]
    if peers:
        _add_peers(folder, loss_windows, prompt, new_tokens, threads, engines, info, log)
    log(f"timing {', '.join(engines)}: {runs} runs each, in turns")
    try:
        speeds = bm.interleaved(engines, runs)
    finally:
        for engine in engines.values():
            if isinstance(engine, peers.Ct2Process):
                engine.close()
    rows, cli_rows = [], []
    for name, speed in speeds.items():
        if name.endswith(" (cli)"):
            continue
        size, loss = info[name]
        row = {"backend": name, "bytes": size, **speed.as_dict()}
        if loss is not None:
            row.update(loss=round(loss, 4), perplexity=round(bm.perplexity(loss), 2))
        rows.append(row)

    hf_rate = next((r["decode_tokens_per_s"] for r in rows if r["backend"].startswith("hf-generate")), None)
    hf_ttft = next((r["ttft_ms"] for r in rows if r["backend"].startswith("hf-generate")), None)
    for r in rows:
        if hf_rate:
            r["decode_vs_hf"] = round(r["decode_tokens_per_s"] / hf_rate, 2)
            r["ttft_vs_hf"] = round(hf_ttft / r["ttft_ms"], 2)
    in_process = {r["backend"]: r for r in rows}
    for name, process in processes.items():
        ours = in_process[name]
        row = {"backend": name, **speeds[f"{name} (cli)"].as_dict(), **process.as_dict()}
        row["decode_vs_bench"] = round(row["decode_tokens_per_s"] / ours["decode_tokens_per_s"], 3)
        row["ttft_vs_bench"] = round(ours["ttft_ms"] / row["ttft_ms"], 3)
        if hf_rate:
            row["decode_vs_hf"] = round(row["decode_tokens_per_s"] / hf_rate, 2)
        cli_rows.append(row)
    return {"model": str(folder), "machine": _machine(threads), "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, "runs": runs, "loss_tokens": sum(len(w) - 1 for w in loss_windows),
            "loss_source": ", ".join(map(str, eval_dirs or [bm.stdlib_dir()])), "rows": rows,
            **({"cli_rows": cli_rows} if cli else {})}


def _add_peers(folder: Path, loss_windows, prompt, new_tokens: int, threads: int, engines: dict, info: dict, log) -> None:
    """Hugging Face generate on the same weights, then CTranslate2 int8 on their Hugging Face copy."""
    from . import peers
    from ..core.checkpoint import weights_fingerprint
    from ..core.errors import GptuiError
    from ..core.hf import load_hf_model, save_hf_copy
    from ..core.paths import cache_dir

    try:
        hf = load_hf_model(folder)
    except GptuiError as e:
        log(f"peers skipped: {e}")
        return
    log("hf-generate: loading")
    name = "hf-generate (fp32, cpu)"
    engines[name] = functools.partial(peers.hf_run, hf, prompt, new_tokens)
    info[name] = (sum(p.numel() * p.element_size() for p in hf.parameters()),
                  peers.hf_validation_loss(hf, loss_windows)[0] if loss_windows else None)
    if importlib.util.find_spec("ctranslate2") is None:
        log("ctranslate2 not installed: skipping its row (pip install 'gptui[bench]')")
        return
    work = cache_dir() / "peers" / weights_fingerprint(folder)[:32]
    hf_dir = work / "hf"
    if not (hf_dir / "model.safetensors").is_file():
        log("ctranslate2: writing the Hugging Face copy")
        save_hf_copy(folder, hf_dir)
    log("ctranslate2: loading (int8, in its own process)")
    vocab = {i: token for token, i in json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8")).items()}
    name = "ctranslate2 (int8, cpu)"
    engines[name] = peers.Ct2Process(hf_dir, work / "ct2-int8", threads, [vocab[i] for i in prompt], new_tokens)
    info[name] = ((work / "ct2-int8" / "model.bin").stat().st_size, None)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Model `{Path(result['model']).name}` · {m['cpu']} · {m['threads']} threads · prompt {result['prompt_tokens']} tokens · "
        f"{result['new_tokens']} new tokens · median of {result['runs']} runs · loss on {result['loss_tokens']:,} tokens "
        f"of {result['loss_source']}",
        "",
        "| backend | loss | perplexity | size (MiB) | first token (ms) | decode (tokens/s) | decode vs HF | first token vs HF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        size = f"{r['bytes'] / 2**20:.1f}" if r.get("bytes") else "—"
        loss = f"{r['loss']:.4f}" if "loss" in r else "—"
        ppl = f"{r['perplexity']:.2f}" if "perplexity" in r else "—"
        vs = f"{r['decode_vs_hf']:.2f}x" if "decode_vs_hf" in r else "—"
        tvs = f"{r['ttft_vs_hf']:.2f}x" if "ttft_vs_hf" in r else "—"
        lines.append(f"| {r['backend']} | {loss} | {ppl} | {size} | {r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.1f} | {vs} | {tvs} |")
    if result.get("cli_rows"):
        lines += [
            "",
            "Through `gptui` processes (`-t 0 -s 0 --format jsonl`, the same prompt on stdin; startup is the wall "
            "time before generation: imports, tokenizer, loading the backend):",
            "",
            "| backend | process wall (s) | startup (s) | first token (ms) | decode (tokens/s) | decode vs bench | "
            "first token vs bench | decode vs HF |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["cli_rows"]:
            vs = f"{r['decode_vs_hf']:.2f}x" if "decode_vs_hf" in r else "—"
            lines.append(f"| {r['backend']} | {r['wall_s']:.2f} | {r['startup_s']:.2f} | {r['ttft_ms']:.1f} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['decode_vs_bench']:.2f}x | {r['ttft_vs_bench']:.2f}x | {vs} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("-m", "--model", envvar="GPTUI_MODEL", help="Model name (see `gptui models`) or folder.")
@click.option("-b", "--backends", default=",".join(DEFAULT_BACKENDS), show_default=True,
              help="Comma-separated backends to measure (cuda is added on a GPU when left default).")
@click.option("--threads", type=int, default=None, help="CPU threads for every engine [default: torch's, as the CLI uses: the cores, or OMP_NUM_THREADS].")
@click.option("--prompt-tokens", type=int, default=512, show_default=True)
@click.option("--new-tokens", type=int, default=256, show_default=True)
@click.option("--runs", type=int, default=5, show_default=True, help="Timed runs per engine (after one warm-up).")
@click.option("--eval-dir", "eval_dirs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of .py files for the loss and the prompt [default: the Python standard library].")
@click.option("--eval-tokens", type=int, default=8192, show_default=True, help="Tokens scored for the loss (0: skip).")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Also time HF generate and CTranslate2.")
@click.option("--cli", is_flag=True,
              help="Also time each backend through real `gptui` processes, beside the in-process figures.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as Markdown.")
@fail_cleanly
def bench(model, backends, threads, prompt_tokens, new_tokens, runs, eval_dirs, eval_tokens, peers, cli, json_path, md_path):
    """Measure every backend on this machine: loss, size, first-token latency, decode speed."""
    _bench(model, backends, threads, prompt_tokens, new_tokens, runs, eval_dirs, eval_tokens, peers, json_path, md_path,
           cli)


def _bench(model, backends, threads, prompt_tokens, new_tokens, runs, eval_dirs, eval_tokens, peers, json_path, md_path,
           cli=False):
    import torch

    from ..core.backends import BACKENDS
    from ..core.backends.base import cpu_threads
    from ..core.errors import GptuiError

    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise GptuiError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if backends == ",".join(DEFAULT_BACKENDS) and torch.cuda.is_available():
        names.append("cuda")
    if prompt_tokens < 1 or new_tokens < 2 or runs < 1:
        raise GptuiError("--prompt-tokens must be >= 1, --new-tokens >= 2 and --runs >= 1")
    result = run_bench(model, names, cpu_threads(threads), prompt_tokens, new_tokens, runs,
                       list(eval_dirs), eval_tokens, peers, log=lambda message: click.echo(message, err=True), cli=cli)
    table = markdown(result)
    click.echo(table, nl=False)
    if md_path:
        md_path.write_text(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
