"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class EdgeclfError(Exception):
    """Something the user can act on (bad input, missing file, failed check). Message = one line."""

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none (never fails:
    an empty message, or one of blank lines, gives the name). ``limit`` cuts a long line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


class ServiceError(EdgeclfError):
    """A device-service option of ``edgeclf run`` that cannot work: an open address without a token, a port in
    use, a bad broker or webhook URL. Raised before the run starts or as it starts."""
