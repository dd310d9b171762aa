"""How many tokens each encoding spends on the Python standard library's own source.

    python bench/tokens_stdlib.py            # every .py file under sysconfig's stdlib path
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gptui.core.tokenizer import ENCODINGS, encode, get_encoding


def count(path: Path) -> tuple[int, dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return 0, {}
    return len(text.encode()), {name: len(encode(get_encoding(name), text)) for name in ENCODINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=sysconfig.get_paths()["stdlib"])
    args = parser.parse_args()
    files = sorted(p for p in Path(args.root).rglob("*.py") if "site-packages" not in p.parts)
    start = time.perf_counter()
    totals = {name: 0 for name in ENCODINGS}
    nbytes = 0
    with ProcessPoolExecutor() as pool:
        for size, counts in pool.map(count, files, chunksize=32):
            nbytes += size
            for name, n in counts.items():
                totals[name] += n
    print(f"{len(files)} files, {nbytes / 1e6:.1f} MB of Python under {args.root} ({time.perf_counter() - start:.0f} s)\n")
    print("| encoding | tokens | bytes/token | vs gpt2 |")
    print("|---|---:|---:|---:|")
    for name in ENCODINGS:
        print(f"| {name} | {totals[name]:,} | {nbytes / totals[name]:.2f} | {totals[name] / totals['gpt2']:.3f}x |")


if __name__ == "__main__":
    main()
