"""`gptui tokenize`: token boundaries or counts, for people and for scripts."""

from __future__ import annotations

import sys
from typing import TextIO

import click

from ..core.errors import GptuiError
from ..core.tokenizer import encode, get_encoding

_SHADES = ("on grey23", "on grey35")


def _read(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as e:
        raise GptuiError(f"{path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GptuiError(f"{path}: not UTF-8 text") from None


def show_tokens(paths, encoding_name: str, count: bool, out: TextIO) -> None:
    enc = get_encoding(encoding_name)
    total = 0
    for path in paths:
        ids = encode(enc, _read(path))
        total += len(ids)
        if count:
            out.write(f"{len(ids)}\t{path}\n")
            continue
        pieces = [enc.decode([i]) for i in ids]
        if out.isatty():
            from rich.console import Console
            from rich.text import Text

            text = Text()
            for n, piece in enumerate(pieces):
                text.append(piece, style=_SHADES[n % 2])
            Console(file=out, highlight=False).print(text)
        else:
            out.write("|".join(pieces) + "\n")
    if count and len(paths) > 1:
        out.write(f"{total}\ttotal\n")
    if not count:
        click.echo(f"{total} tokens ({encoding_name})", err=True)
