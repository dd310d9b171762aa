"""One exception type for everything a user can get wrong; CLIs turn it into one line and exit 1."""

import functools
import sys

import click


class GptuiError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name). Never a bug."""


def fail_cleanly(fn):
    """For click commands: a GptuiError becomes one line and exit 1, Ctrl-C exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GptuiError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            sys.stdout.flush()
            click.echo("\ninterrupted", err=True)
            sys.exit(130)

    return wrapper
