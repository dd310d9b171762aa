"""Options that several `gptui` commands share, with shell completion (`gptui -b <TAB>`)."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from ..core.backends import DEFAULT_BACKEND, available_backends


def _complete_model(ctx, param, incomplete: str) -> list[CompletionItem]:
    from ..core.registry import list_models  # reads the model folders only when completing

    try:
        names = [m.name for m in list_models()]
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


model_option = click.option("-m", "--model", envvar="GPTUI_MODEL", shell_complete=_complete_model,
                            help="Model name (see `gptui models`) or folder.")
def _complete_backend(ctx, param, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in available_backends() if n.startswith(incomplete)]


# Not a click.Choice: an unknown name gets the backend registry's one-line error (exit 1), like
# every other bad input, rather than click's usage block; the names show in --help and complete.
backend_option = click.option("-b", "--backend", envvar="GPTUI_BACKEND", default=DEFAULT_BACKEND, show_default=True,
                              metavar="[" + "|".join(available_backends()) + "]", shell_complete=_complete_backend,
                              help="Inference backend (`gptui bench` compares them; auto: cuda on a GPU).")


def no_log_option(what: str):
    """--no-log (or GPTUI_NO_LOG) for a command that logs `what` to the history database."""
    return click.option("--no-log", is_flag=True, envvar="GPTUI_NO_LOG",
                        help=f"Keep no record of {what} (see `gptui logs`; or [log] enabled = false in the settings).")
