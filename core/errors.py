"""One exception type for everything a user can get wrong; CLIs turn it into one line and exit 1."""

import functools
import sys


class GptuiError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name). Never a bug."""


def fail_cleanly(fn):
    """For command functions: a GptuiError becomes one line on stderr ("Error: ...", as click
    prints its own errors) and exit 1, Ctrl-C exit 130. Needs no CLI library, so core stays free
    of click."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GptuiError as e:
            sys.stdout.flush()
            print(f"Error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stdout.flush()
            print("\ninterrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
