"""One exception type for everything a user can get wrong; CLIs turn it into one line and exit 1."""


class GptuiError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name). Never a bug."""
