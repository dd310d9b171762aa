"""`gptui-train prepare | pretrain | sft | eval`: parse options, delegate, report in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.core import ParameterSource

from ..core.errors import GptuiError
from ..core.errors import fail_cleanly

GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


# ----- prepare -----

@click.command()
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--hf", "hf_source", metavar="NAME_OR_FILE",
              help="Instruction data: a Hugging Face dataset name (flytech/python-codes-25k) or a local "
                   ".json/.jsonl/.parquet file with columns instruction, input, output.")
@click.option("--mine", "mine_roots", multiple=True, type=click.Path(path_type=Path),
              help="Mine instruction pairs from the docstrings of functions and classes under DIR (repeatable).")
@click.option("--from-log", "from_log", is_flag=False, flag_value="-", default=None, metavar="[DB]",
              help="Learn from the app: accepted completions and kept chat answers in the log database "
                   "(default: `gptui logs path`).")
@click.option("--holdout", type=click.Path(path_type=Path, file_okay=False),
              help="With --mine: a prepared code folder whose validation files must not be mined.")
@click.option("--holdout-from", type=click.Path(path_type=Path),
              help="With ROOTS: a prepared code folder or its manifest JSON file; the validation split becomes "
                   "the files it held out (by sha256) found under ROOTS, so an old and a new model share it.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--encoding", default="gpt2-code", show_default=True, help="gpt2 or gpt2-code")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=None,
              help="Share of files (or examples) held out for validation [0.01 for code, 0.02 for instructions].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/val split.")
@click.option("--num-proc", type=click.IntRange(1), default=os.cpu_count() or 1, show_default="all cores",
              envvar="GPTUI_NUM_PROC", help="Worker processes for reading and tokenising.")
@click.option("--max-file-bytes", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Skip larger .py files (usually generated tables).")
@click.option("--shard-tokens", type=click.IntRange(1), default=100_000_000, show_default=True,
              help="Tokens per shard file (cut at document boundaries).")
@click.option("--force", is_flag=True, help="Replace an --out folder that holds other prepared data.")
@fail_cleanly
def prepare(roots, hf_source, mine_roots, from_log, holdout, holdout_from, out, encoding, val_fraction, seed, num_proc,
            max_file_bytes, shard_tokens, force):
    """Turn .py directories (ROOTS), --hf data, --mine'd docstrings or --from-log's accepted completions
    into token shards and a manifest.json."""
    from ..core.paths import cache_dir

    if sum(map(bool, (roots, hf_source, mine_roots, from_log))) != 1:
        raise GptuiError("give one source: directories of .py files, --hf NAME_OR_FILE, --mine DIR or --from-log [DB]")
    if holdout and not mine_roots:
        raise GptuiError("--holdout goes with --mine")
    if holdout_from and not roots:
        raise GptuiError("--holdout-from goes with directories of .py files")
    if holdout_from and val_fraction is not None:
        raise GptuiError("--holdout-from fixes the validation files; leave out --val-fraction")
    cache = cache_dir()
    if roots:
        from .prepare_code import prepare_code

        manifest, reused = prepare_code(list(roots), out, encoding, 0.01 if val_fraction is None else val_fraction, seed,
                                        num_proc, max_file_bytes, shard_tokens, force, cache / "prepare", holdout_from)
        what = "files"
    else:
        from .prepare_sft import load_instructions, mine_to_jsonl, prepare_sft

        extra = {}
        if hf_source:
            source = {"type": "hf", "name": hf_source}
            ds = load_instructions(hf_source, cache / "datasets")
        elif from_log:
            from ..core.history import db_path
            from .from_log import log_to_jsonl

            db = db_path() if from_log == "-" else Path(from_log).expanduser()
            jsonl, counts = log_to_jsonl(db, cache / "prepare")
            source = {"type": "log", "db": str(db.resolve()), "rows": counts}
            ds = load_instructions(str(jsonl), cache / "datasets")
            extra = {"from-log.jsonl": jsonl}
        else:
            held_out = _held_out_hashes(holdout) if holdout else frozenset()
            jsonl, files = mine_to_jsonl(list(mine_roots), cache / "prepare", num_proc, max_file_bytes, held_out)
            source = {"type": "mined", "roots": [str(Path(r).resolve()) for r in mine_roots], "files_read": files,
                      "held_out_files": len(held_out), "holdout": str(holdout) if holdout else None}
            ds = load_instructions(str(jsonl), cache / "datasets")
            extra = {"mined.jsonl": jsonl}
        manifest, reused = prepare_sft(ds, source, out, encoding, 0.02 if val_fraction is None else val_fraction, seed,
                                       num_proc, force, extra)
        what = "examples"
    splits = manifest["splits"]
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in manifest["skipped"].items()) or "none"
    click.echo(
        f"{'up to date, reused' if reused else 'wrote'} {out}: train {splits['train'][what]:,} {what} / "
        f"{splits['train']['tokens']:,} tokens, val {splits['val'][what]:,} {what} / {splits['val']['tokens']:,} tokens; "
        f"skipped {skipped}", err=True)


def _held_out_hashes(prepared: Path) -> frozenset:
    from .shards import PRETRAIN, read_manifest

    manifest = read_manifest(prepared, PRETRAIN)
    documents = manifest["splits"]["val"].get("documents")
    if documents is None:
        raise GptuiError(f"{prepared}: its manifest lists no validation files; prepare it again with this version")
    return frozenset(d["sha256"] for d in documents)


# ----- pretrain and sft -----

def _training_options(sft: bool):
    """The options pretrain and sft share; their defaults differ (fine-tuning is short and gentle)."""
    d = dict(steps=1000, batch_tokens=1 << 16, lr=1e-4, warmup=20, eval_every=100, save_every=200) if sft else \
        dict(steps=5000, batch_tokens=1 << 19, lr=6e-4, warmup=200, eval_every=250, save_every=500)
    options = [
        click.option("--data", type=click.Path(path_type=Path), help="A folder from gptui-train prepare."),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (must not exist unless --resume)."),
        click.option("--init", metavar="CHECKPOINT", help="Start from this model (name or folder)."
                     + (" Required." if sft else " Instead of --preset.")),
        click.option("--steps", type=click.IntRange(1), default=d["steps"], show_default=True),
        click.option("--batch-tokens", type=click.IntRange(1), default=d["batch_tokens"], show_default=True,
                     help="Tokens per optimizer step over all processes (gradient accumulation makes up the rest)."),
        click.option("--micro-batch", type=click.IntRange(1), default=16, show_default=True,
                     help="Rows per forward pass per process."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=d["lr"], show_default=True),
        click.option("--min-lr", type=click.FloatRange(min=0), default=None,
                     help="End of the schedule [lr/10 for cosine, 0 for wsd]."),
        click.option("--warmup", type=click.IntRange(0), default=d["warmup"], show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "wsd"]), default="cosine", show_default=True,
                     help="cosine, or wsd (warmup-stable-decay: constant, then a linear decay over the last "
                          "--decay-frac; --resume --steps N can lengthen a run before its decay starts)."),
        click.option("--decay-frac", type=click.FloatRange(0, 1, min_open=True), default=0.2, show_default=True,
                     help="wsd: share of the steps spent decaying."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True),
        click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default="adamw", show_default=True,
                     help="muon: Muon for the transformer blocks' matrices (updates scaled to AdamW's size, so "
                          "--lr and --weight-decay mean the same), AdamW for embeddings, biases and norms."),
        click.option("--grad-clip", type=click.FloatRange(min=0), default=1.0, show_default=True, help="0 disables."),
        click.option("--eval-every", type=click.IntRange(1), default=d["eval_every"], show_default=True),
        click.option("--eval-tokens", type=click.IntRange(1), default=1 << 20, show_default=True),
        click.option("--save-every", type=click.IntRange(1), default=d["save_every"], show_default=True),
        click.option("--log-every", type=click.IntRange(1), default=1, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint."),
        click.option("--compile/--no-compile", default=None, help="torch.compile [on for CUDA]."),
        click.option("--compile-mode", type=click.Choice(["default", "max-autotune-no-cudagraphs"]), default="default",
                     show_default=True, help="torch.compile mode; autotuning compiles for minutes, may run faster."),
        click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--loss", type=click.Choice(["auto", "plain", "chunked", "fused"]), default="auto", show_default=True,
                     help="fused turns the logits into their gradient in the forward pass (auto picks it on CUDA); "
                          "chunked never holds the whole (tokens x vocabulary) logits: less memory."),
        click.option("--fp32-residual", is_flag=True,
                     help="Under bf16/fp16 keep the residual stream in fp32 (slower; by default it is carried in bf16/fp16)."),
        click.option("--attention", type=click.Choice(["auto", "flash", "cudnn", "efficient"]), default="auto",
                     show_default=True, help="Attention kernel on CUDA (auto lets PyTorch choose)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--mix-data", type=click.Path(path_type=Path), default=None,
                     help="A prepared code folder whose windows are mixed into every batch: with sft, replayed "
                          "code keeps the model's plain completions; with pretrain, a smaller corpus "
                          "(exercise-shaped code, say) is upweighted."),
        click.option("--mix-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25,
                     show_default=True, help="With --mix-data: share of rows that are its windows."),
        click.option("--fim-rate", type=click.FloatRange(0, 1), default=None,
                     help="Share of documents rearranged prefix-suffix-middle for fill-in-the-middle "
                          "[0.5 when pretraining with gpt2-code, 0 for sft]."),
        click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
                     help="Processes (GPUs) to launch through torchrun on this machine."),
        click.option("--tensorboard", is_flag=True, help="Also write TensorBoard scalars to OUT/tensorboard."),
    ]
    if not sft:
        options[3:3] = [
            click.option("--preset", default="small", show_default=True, help="tiny, small or gpt2 (from scratch)."),
            click.option("--encoding", default="gpt2-code", show_default=True, help="Tokenizer (from scratch)."),
        ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _argv_for_torchrun(ctx: click.Context) -> list[str]:
    """This command's arguments as given, minus --nproc, for the processes torchrun starts."""
    argv = [ctx.info_name]
    for param in ctx.command.params:
        if param.name == "nproc" or ctx.get_parameter_source(param.name) not in GIVEN:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            if param.secondary_opts:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                argv.append(param.opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


def _train(ctx: click.Context, task: str, params: dict) -> None:
    import torch

    from . import distributed
    from .trainer import TrainConfig, read_run_config, run_training

    if params["nproc"] > 1 and "RANK" not in os.environ:
        if distributed.pick_device(params["device"]).type == "cuda" and params["nproc"] > torch.cuda.device_count():
            raise GptuiError(f"--nproc {params['nproc']}: only {torch.cuda.device_count()} GPU(s) here")
        ctx.exit(distributed.launch(params["nproc"], _argv_for_torchrun(ctx)))
    resume = params.pop("resume")
    params.pop("nproc")
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
    if resume:
        given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) in GIVEN}
        config = TrainConfig.from_dict({**read_run_config(Path(values["out"])), **given, "task": task})
    else:
        if not values.get("data"):
            raise GptuiError("--data is required (a folder from gptui-train prepare)")
        config = TrainConfig(task=task, **values)
    try:
        code = run_training(config, resume=resume)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, without a checkpoint
        click.echo(f"aborted; {config.out}/latest holds the last checkpoint, if any", err=True)
        code = 130
    if code:
        ctx.exit(code)


@click.command()
@_training_options(sft=False)
@click.pass_context
@fail_cleanly
def pretrain(ctx, **params):
    """Train a model on prepared code: from a --preset, or from --init CHECKPOINT."""
    _train(ctx, "pretrain", params)


@click.command()
@_training_options(sft=True)
@click.pass_context
@fail_cleanly
def sft(ctx, **params):
    """Fine-tune a pretrained model (--init) on instruction data; loss on response tokens only."""
    _train(ctx, "sft", params)


# ----- eval -----

@click.command("eval")
@click.argument("model")
@click.option("--data", type=click.Path(path_type=Path), help="A prepared folder (with --split).")
@click.option("--split", default="val", show_default=True, help="train or val.")
@click.option("--py-dir", "py_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Evaluate on the .py files under DIR instead (repeatable).")
@click.option("--backend", help="Run the model through this inference backend (e.g. torch-fp32, onnx-int8).")
@click.option("--max-tokens", type=click.IntRange(1), default=1 << 20, show_default=True, help="Tokens to score at most.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@fail_cleanly
def evaluate(model, data, split, py_dirs, backend, max_tokens, batch_size, device, as_json):
    """Loss per token, perplexity and bits per byte of MODEL (a name or folder)."""
    from .evaluate import evaluate as run_eval

    result = run_eval(model, data, split, list(py_dirs), backend, max_tokens, batch_size, device)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['model']} [{result['backend']}] on {result['source']}: loss {result['loss']:.4f} nats/token, "
                   f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte "
                   f"({result['tokens']:,} tokens, {result['bytes']:,} bytes)")


# ----- functional check and plots -----

def _parse_ks(text: str | None, samples: int) -> list[int] | None:
    if text is None:
        return None  # 1, 5 and 10, as far as --samples allows
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise GptuiError(f"--k {text!r}: give whole numbers separated by commas, e.g. 1,5,10") from None
    if not ks or ks[0] < 1:
        raise GptuiError(f"--k {text!r}: every k must be at least 1")
    if ks[-1] > samples:
        raise GptuiError(f"--k {text!r}: pass@{ks[-1]} needs --samples {ks[-1]} or more (got {samples})")
    return ks


def _print_task_table(name: str, backend: str, report) -> None:
    from .functional import DIFFICULTIES

    rates = report.rates()
    columns = [c for c in rates if c != "tasks"]
    s = report.settings
    how = "greedy" if s["greedy"] else ""
    if s["samples"]:
        how += f"{' + ' if how else ''}{s['samples']} samples/task at T={s['temperature']:g}, top-p {s['top_p']:g}, seed {s['seed']}"
    if s.get("no_repeat_ngram"):
        how += f", no repeated {s['no_repeat_ngram']}-grams"
    if s.get("stop_repeats"):
        how += f", stop at {s['stop_repeats']} repeated lines"
    click.echo(f"{name} [{backend}], {rates['tasks']} built-in tasks, {s['prompt_style']} prompt, {how} "
               f"({report.seconds:.0f} s)")
    click.echo(f"{'difficulty':<11}{'tasks':>6}" + "".join(f"{c.replace('_', ' '):>15}" for c in columns))
    for difficulty in (*DIFFICULTIES, None):
        row = report.rates(difficulty)
        if row["tasks"]:
            click.echo(f"{difficulty or 'all':<11}{row['tasks']:>6}" + "".join(f"{row[c]:>15.1%}" for c in columns))


@click.command()
@click.argument("model")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--backend", default="torch-fp32", show_default=True, help="Inference backend that writes the code.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None,
              help="A task file (JSONL: name, difficulty, prompt, solution, test) instead of the built-in set.")
@click.option("--samples", type=click.IntRange(0), default=10, show_default=True,
              help="Sampled completions per task for pass@k (0: greedy only). Built-in tasks only.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.8, show_default=True,
              help="Sampling temperature of the pass@k samples.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--k", "k_text", metavar="K[,K...]", default=None, help="pass@k values to report [1,5,10 up to --samples].")
@click.option("--greedy/--no-greedy", default=True, show_default=True, help="Also score one greedy completion per task.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample j of each task uses seed + j.")
@click.option("--prompt", "prompt_style", type=click.Choice(["code", "instruct"]), default="code", show_default=True,
              help="code: the model continues the signature and docstring; instruct: the docstring as an "
                   "instruction in the SFT template, the answer starting at the signature.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Check at most this many tasks (or functions).")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True, help="Tokens per function body at most.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds one task's program may run.")
@click.option("--no-repeat-ngram", type=click.IntRange(0), default=0, show_default=True,
              help="Never generate the same N tokens twice in a completion (0: off), as `gptui -i` does.")
@click.option("--stop-repeats", type=click.IntRange(0), default=0, show_default=True,
              help="End a completion when one line comes K times in a row, keeping one copy (0: off).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (with every completion) as JSON.")
@fail_cleanly
def funceval(model, paths, backend, tasks_file, samples, temperature, top_p, k_text, greedy, seed, prompt_style, limit,
             max_tokens, timeout, no_repeat_ngram, stop_repeats, as_json):
    """Does the code MODEL writes work? Run its function bodies against tests.

    Without PATHS: the built-in original tasks (or --tasks FILE); greedy pass@1 and pass@k over
    --samples seeded samples per task, by difficulty. With PATHS (.py files or folders):
    complete held-out functions from signature and docstring and run their doctests.

    Generated code runs in a child process with a timeout, resource limits and no network.
    """
    from ..core.backends import load_backend
    from ..core.checkpoint import Checkpoint
    from ..core.registry import resolve
    from ..core.sampling import SamplingParams
    from ..core.tokenizer import get_encoding
    from .functional import evaluate as run_functional, find_problems

    if paths:
        files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))})
        problems = find_problems(files, limit=None)
        if not problems:
            raise GptuiError("no top-level functions with doctests under the given paths")
    else:
        from .functional import load_tasks

        ks = _parse_ks(k_text, samples)
        if not greedy and not samples:
            raise GptuiError("--no-greedy with --samples 0 leaves nothing to measure")
        tasks = load_tasks(tasks_file)[:limit]
    guards = {"no_repeat_ngram": no_repeat_ngram, "stop_repeats": stop_repeats}
    SamplingParams(**guards)  # the same validation as everywhere else, before a model loads
    folder = resolve(model)
    encoding = get_encoding(Checkpoint.open(folder).encoding)
    engine = load_backend(backend, folder)
    if not paths:
        from .functional import evaluate_tasks

        report = evaluate_tasks(engine, encoding, tasks, samples=samples, temperature=temperature, top_p=top_p, ks=ks,
                                greedy=greedy, seed=seed, max_tokens=max_tokens, prompt_style=prompt_style,
                                timeout=timeout, **guards,
                                progress=lambda i, n: click.echo(f"\rtask {i}/{n}", err=True, nl=False))
        click.echo("", err=True)
        result = {"model": str(folder), "backend": backend, "task_file": str(tasks_file or "built-in"),
                  **report.to_dict(with_completions=as_json)}
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            _print_task_table(folder.name, backend, report)
        return
    result = run_functional(engine, encoding, problems, max_tokens=max_tokens, limit=limit, **guards,
                            progress=lambda r: click.echo(f"\r{r.passed}/{r.problems} passed", err=True, nl=False))
    click.echo("", err=True)
    summary = {"model": str(folder), "backend": backend, "functions_found": len(problems),
               "checkable": result.problems, "passed": result.passed, "pass_rate": result.pass_rate}
    if as_json:
        click.echo(json.dumps({**summary, "details": result.details}, indent=2))
    else:
        click.echo(f"{folder.name} [{backend}]: {result.passed}/{result.problems} held-out functions pass their "
                   f"doctests ({result.pass_rate:.1%}); {len(problems) - result.problems} could not be checked")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("curves.png"), show_default=True)
@click.option("--title", default="", help="Title of the loss panel.")
@fail_cleanly
def plot(runs, out, title):
    """Draw training/validation loss and tokens/s of RUNS (run folders or metrics.jsonl files) to a PNG."""
    from .plot import plot_runs

    click.echo(f"wrote {plot_runs(list(runs), out, title)}", err=True)
