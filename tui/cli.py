"""The `gptui` command: the app with a TTY, a completion filter with piped input or a prompt."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from ..core import __version__
from ..core.errors import GptuiError, fail_cleanly
from ..core.history import SOURCES
from ..core.sampling import SamplingParams
from .options import backend_option, model_option, no_log_option


class DefaultGroup(click.Group):
    """`gptui ARGS` runs `complete` unless the first word is a subcommand."""

    def parse_args(self, ctx, args):
        completing_first_word = ctx.resilient_parsing and not args  # `gptui <TAB>`: offer the subcommands
        if not completing_first_word and (
                not args or args[0] not in self.commands and args[0] not in ("-h", "--help", "--version")):
            args = ["complete", *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx, incomplete):
        items = super().shell_complete(ctx, incomplete)  # subcommands (and options after a "-")
        if not incomplete.startswith("-"):
            items.append(CompletionItem(incomplete, type="file"))  # `gptui FILE.py` opens it in the app
        return items


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gptui")
def main():
    """gptui: a small Python code model in your terminal.

    \b
    gptui                       open the app (needs a terminal)
    gptui FILE.py               open FILE.py in the app
    gptui "def fib(n):"         complete a prompt, print the text
    cat f.py | gptui            complete stdin (then the argument, if any)
    gptui models                list models
    gptui tokenize FILE         show token boundaries
    gptui serve                 OpenAI-compatible HTTP API on 127.0.0.1:8080
    gptui logs                  the last completions and chat answers
    """


@main.command()
@click.argument("prompt", required=False)
@model_option
@backend_option
@click.option("-n", "--max-tokens", type=int, default=128, show_default=True)
@click.option("-t", "--temperature", type=float, default=0.8, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 keeps every token.")
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--no-repeat-ngram", type=int, default=None, metavar="N",
              help="Never generate the same N tokens twice; 0 disables. [default: 12 with -i, else 0]")
@click.option("--stop-repeats", type=int, default=None, metavar="K",
              help="Stop when a line (or a cycle of up to 4) comes K times in a row; 0 disables. "
                   "[default: 3 with -i, else 0]")
@click.option("-s", "--seed", type=int, default=None, help="Same seed, same output.")
@click.option("--stop", multiple=True, help="Stop before this string (repeatable).")
@click.option("--stats", is_flag=True, help="Time to first token and tokens/s on stderr.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="jsonl: one event per token with its log-prob and timing.")
@click.option("-i", "--instruct", is_flag=True, help="Wrap the prompt in the instruction template (chat).")
@no_log_option("this run")
@fail_cleanly
def complete(prompt, model, backend, max_tokens, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram,
             stop_repeats, seed, stop, stats, fmt, instruct, no_log):
    """Complete PROMPT (after stdin, when piped) and print the continuation."""
    from .filter import read_prompt, run_filter

    stdin_piped = not sys.stdin.isatty()
    if not stdin_piped and (prompt is None or Path(prompt).suffix == ".py" and Path(prompt).is_file()):
        return open_app(prompt, model, backend, log=not no_log)
    from ..core.history import History
    from .settings import CHAT_NO_REPEAT_NGRAM, CHAT_STOP_REPEATS, load_settings

    # Greedy answers to instructions loop; plain completion keeps the model's own distribution.
    if no_repeat_ngram is None:
        no_repeat_ngram = CHAT_NO_REPEAT_NGRAM if instruct else 0
    if stop_repeats is None:
        stop_repeats = CHAT_STOP_REPEATS if instruct else 0
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                            seed=seed, max_tokens=max_tokens, stop=tuple(stop), no_repeat_ngram=no_repeat_ngram,
                            stop_repeats=stop_repeats)
    text = read_prompt(prompt, sys.stdin if stdin_piped else None)
    history = History(enabled=not no_log and load_settings()[0].log_enabled, source="cli")
    try:
        run_filter(text, model, backend, params, sys.stdout, sys.stderr, fmt=fmt, stats=stats, instruct=instruct,
                   history=history)
    finally:
        history.close()


def open_app(path, model, backend, log=True):
    if not sys.stdout.isatty():
        raise GptuiError("no prompt given and stdout is not a terminal: pass a prompt or pipe one on stdin")
    from click.core import ParameterSource

    from .app import run_app

    # A backend left at its default defers to the one remembered from the app's model picker.
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("backend") is ParameterSource.DEFAULT:
        backend = None
    run_app(path=path, model=model, backend=backend, log=log)


@main.command()
@click.option("--check", is_flag=True, help="Read every weight to find damaged files (slower).")
@fail_cleanly
def models(check):
    """List models: name, parameters, size, tokenizer, where."""
    from ..core.registry import list_models

    rows = [("NAME", "PARAMS", "SIZE", "TOKENIZER", "WHERE", "STATUS")]
    for m in list_models(deep=check):
        rows.append((m.name, f"{m.params / 1e6:.1f}M" if m.params else "?", f"{m.bytes / 2**20:.1f} MiB",
                     m.encoding or "?", f"{m.where}: {m.path}", "ok" if m.ok else f"broken: {m.error}"))
    if len(rows) == 1:
        click.echo("no models found (see `gptui-train init`)", err=True)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-e", "--encoding", default="gpt2-code", show_default=True, help="gpt2 or gpt2-code")
@click.option("-c", "--count", is_flag=True, help="Print token counts only.")
@fail_cleanly
def tokenize(files, encoding, count):
    """Show how FILES (or stdin) split into tokens."""
    from .tokens_view import show_tokens

    show_tokens(files or ("-",), encoding, count, sys.stdout)


@main.group(invoke_without_command=True)
@click.option("-n", "--count", type=click.IntRange(0), default=10, show_default=True, help="Entries to show; 0 for all.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries with every field.")
@click.option("-m", "--model", help="Only this model's entries.")
@click.option("--source", type=click.Choice(SOURCES), help="Only the entries of the app, `gptui PROMPT` or `serve`.")
@click.pass_context
@fail_cleanly
def logs(ctx, count, as_json, model, source):
    """The last completions and chat answers, oldest first (`gptui logs path`: where they are)."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from ..core.history import db_path, describe, recent

    path = db_path()
    if not path.exists():
        click.echo(f"no log yet ({path})", err=True)
        entries = []
    else:
        entries = recent(path, count, model, source)
    if as_json:
        click.echo(json.dumps(entries, indent=2, ensure_ascii=False))
        return
    for entry in entries:
        click.echo(describe(entry))


@logs.command("path")
def logs_path():
    """Print where the log database is ($GPTUI_DB, else gptui.db in the data folder)."""
    from ..core.history import db_path

    click.echo(str(db_path()))


from .bench import bench  # noqa: E402
from .serve import serve  # noqa: E402

main.add_command(bench)
main.add_command(serve)


if __name__ == "__main__":
    main()
