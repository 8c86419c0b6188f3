"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class EdgeclfError(Exception):
    """Something the user can act on (bad input, missing file, failed check). Message = one line."""

    exit_code = 2
