"""`gptui-train`: init, prepare, pretrain, sft, eval, export. Commands parse and delegate."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..core import __version__
from ..core.errors import GptuiError, fail_cleanly


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gptui-train")
def main():
    """Prepare data, pretrain, fine-tune, evaluate and export gptui models."""


@main.command()
@click.option("--preset", default="small", show_default=True, help="tiny, small or gpt2")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--encoding", default="gpt2-code", show_default=True, help="gpt2 or gpt2-code")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@fail_cleanly
def init(preset, out, encoding, seed, force):
    """Write a randomly initialised checkpoint: the start of training from scratch."""
    import torch

    from ..core.checkpoint import save_checkpoint
    from ..core.config import preset as make_config
    from ..core.model import GPT
    from ..core.tokenizer import get_encoding

    vocab = get_encoding(encoding).n_vocab
    config = make_config(preset, vocab_size=vocab)
    if out.exists() and any(out.iterdir()) and not force:
        raise GptuiError(f"{out} already exists and is not empty (use --force to replace it)")
    torch.manual_seed(seed)
    model = GPT(config)
    try:
        save_checkpoint(out, model, encoding, provenance={"init": {"preset": preset, "seed": seed}})
    except OSError as e:
        raise GptuiError(f"cannot write {out}: {e.strerror}") from None
    click.echo(f"wrote {out} ({model.num_params() / 1e6:.1f}M parameters, {encoding})", err=True)


from .commands import evaluate, funceval, plot, prepare, pretrain, sft  # noqa: E402

for _command in (prepare, pretrain, sft, evaluate, funceval, plot):
    main.add_command(_command)

from .export import export  # noqa: E402
main.add_command(export)
from .gather import gather_command  # noqa: E402
main.add_command(gather_command)


if __name__ == "__main__":
    main(sys.argv[1:])
