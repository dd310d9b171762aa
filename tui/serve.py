"""`gptui serve`: the OpenAI-compatible HTTP API (tui/openai_api.py) under uvicorn.

Every answer goes to the history log with source `serve` (unless --no-log or `[log] enabled =
false`). Ctrl-C or SIGTERM stops accepting connections, lets the running requests finish (up to
--drain seconds), and exits 0.
"""

from __future__ import annotations

import ipaddress
import logging
import signal

import click

from ..core.errors import GptuiError, fail_cleanly
from .options import backend_option, model_option, no_log_option


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn(line: str) -> None:
    """A log problem, as the CLI shows it: one line on stderr."""
    click.echo(f"warning: {line}", err=True)


def run_server(model: str | None, backend: str, host: str, port: int, api_key: str | None, queue: int,
               drain: float, log_level: str = "info", log: bool = True) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise GptuiError(f"gptui serve needs uvicorn and starlette ({e}); pip install gptui again") from None
    from ..core.history import History
    from .openai_api import Engine, ServedModel, create_api
    from .settings import load_settings

    served = ServedModel.load(model, backend)
    history = History(enabled=log and load_settings()[0].log_enabled, source="serve")
    if history.warning:
        warn(history.warning)
    engine = Engine(served, queue_size=queue, history=history, warn=warn)
    app = create_api(engine, api_key=api_key)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn re-raises a caught signal once it has shut down, so the process would die by
            # it (130 or -15); a drained server has done what was asked, so exit 0 instead.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C stops waiting for running requests
            else:
                self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain,
                            lifespan="on")
    server = Server(config)
    fim = "fill-in-the-middle" if served.supports_fim else "no fill-in-the-middle (suffixes are ignored)"
    display = f"[{host}]" if ":" in host else host
    click.echo(f"gptui serve: {served.name} on {served.backend.name}, {served.block_size}-token window, {fim}; "
               f"OpenAI base URL http://{display}:{port}/v1", err=True)
    if not is_loopback(host) and not api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach this port can use it",
                   err=True)
    server.run()  # a port already taken: uvicorn logs why and exits 1


@click.command()
@model_option
@backend_option
@click.option("--host", default="127.0.0.1", show_default=True, envvar="GPTUI_HOST",
              help="Address to listen on; loopback by default. Anything else should have --api-key.")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="GPTUI_PORT")
@click.option("--api-key", envvar="GPTUI_API_KEY", help="Require `Authorization: Bearer KEY` on every request.")
@click.option("--queue", type=click.IntRange(0, 10_000), default=16, show_default=True,
              help="Requests that may wait behind the running one; more get 429.")
@click.option("--drain", type=float, default=30.0, show_default=True,
              help="Seconds Ctrl-C/SIGTERM waits for running requests before closing them.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@no_log_option("the answers")
@fail_cleanly
def serve(model, backend, host, port, api_key, queue, drain, log_level, no_log):
    """Serve the model over an OpenAI-compatible HTTP API (and llama.cpp's /infill).

    \b
    gptui serve                          http://127.0.0.1:8080/v1
    gptui serve -m gptui-code --port 9000
    """
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(levelname)s: %(message)s")
    run_server(model, backend, host, port, api_key, queue, drain, log_level, log=not no_log)
