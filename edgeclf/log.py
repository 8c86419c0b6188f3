"""Logging: the library logs (``logging.getLogger("edgeclf.<module>")``), the CLI decides what shows.

* ``configure(verbose=...)``: INFO and up on stderr (DEBUG with ``--verbose``), warnings prefixed
  ``warning:``; third-party Python loggers and warnings (TensorFlow, absl, tf2onnx, ...) are silenced
  unless ``--verbose``.
* ``quiet_native_stderr()``: TensorFlow, XLA and absl write C++ log lines straight to file descriptor 2
  before Python can intervene (``TF_CPP_MIN_LOG_LEVEL`` no longer stops absl's "All log messages before
  absl::InitializeLog()" banner, the oneDNN and CUDA notices, or "failed call to cuInit"). The CLI of
  ``train`` and ``export`` routes fd 2 through a small filter process that drops those lines and passes
  everything else through. A process, not a thread: it needs no GIL, so a native thread writing to
  stderr can never block on us, and it drains what a crashing process wrote last.
* ``debug`` (``--debug`` or ``EDGECLF_DEBUG=1``): errors print their traceback, causes included.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass

ROOT = "edgeclf"
THIRD_PARTY_LOGGERS = ("absl", "tensorflow", "tf2onnx", "h5py", "matplotlib", "PIL", "onnx", "onnxruntime",
                       "keras", "tf_keras")

# C++ log lines (absl / TF / XLA: "I0000 00:00:1795942916.909843    3506 port.cc:153] ...", the older
# "2026-11-29 09:01:02.123456: I tensorflow/...") and the converter's and absl's own stray prints.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+(?:\.\d+)?\s+\d+ \S+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|fully_quantize: \d, inference_type: \d+, input_inference_type: "
    rb"|Estimated count of arithmetic ops: "
    rb"|Summary on the non-converted ops:"
    rb"|Saved artifact at '"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    rb"|WARNING:absl:"
    rb"|INFO:tensorflow:"
    rb"|WARNING:tensorflow:)"
)
# Lines that continue a dropped block (the converter's op summary, Keras' traced signature).
NATIVE_CONTINUATION = re.compile(rb"^(?:\s+\S|---|\* Accepted dialects:|Output Type:|Captures:|Input:|Args:|Returns:)")

_FILTER_SOURCE = r"""
import os, re, sys
noise = re.compile(%r)
cont = re.compile(%r)
out = os.fdopen(int(sys.argv[1]), "wb", buffering=0)
dropping = False
for line in sys.stdin.buffer:
    if noise.match(line):
        dropping = True
        continue
    if dropping and cont.match(line):
        continue
    dropping = False
    out.write(line)
"""


@dataclass
class Settings:
    verbose: bool = False
    debug: bool = os.environ.get("EDGECLF_DEBUG", "") not in ("", "0", "false", "no")


settings = Settings()
_filter: subprocess.Popen | None = None


LOG_WIDTH = 1000  # columns when the output is not a terminal: a table in a log file is never cut


def table_console(min_width: int = 80, **kw):
    """A rich Console for tables. On a terminal, its width (at least ``min_width``); sent to a file or a pipe (CI,
    ``nohup``, ``| tee``), wide enough that no file name, recipe or note is cut or folded."""
    from rich.console import Console

    probe = Console(**kw)
    width = max(min_width, probe.width) if probe.is_terminal else LOG_WIDTH
    return Console(highlight=False, width=width, **kw)


def get_logger(name: str) -> logging.Logger:
    """The logger of an edgeclf module (pass ``__name__``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _ConsoleHandler(logging.Handler):
    """Messages as a person reads them: no timestamps or logger names; ``warning:``/``error:`` prefixes."""

    PREFIX = {logging.WARNING: "[yellow]warning:[/yellow] ", logging.ERROR: "[red]error:[/red] ",
              logging.CRITICAL: "[red]error:[/red] "}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from rich.console import Console
            from rich.markup import escape

            msg = record.getMessage()
            if not getattr(record, "markup", False):
                msg = escape(msg)
            prefix = self.PREFIX.get(record.levelno, "")
            # resolved at each call: sys.stderr may have been replaced (tests, click's CliRunner)
            Console(file=sys.stderr, highlight=False, soft_wrap=True).print(prefix + msg)
            if record.exc_info and settings.debug:
                import traceback

                sys.stderr.write("".join(traceback.format_exception(*record.exc_info)))
        except Exception:  # a log line must never end the program
            self.handleError(record)


def configure(verbose: bool = False, debug: bool | None = None) -> None:
    """Set up what the CLI shows. Idempotent: a second call replaces the first's handler."""
    settings.verbose = verbose
    if debug is not None:
        settings.debug = debug or settings.debug
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if isinstance(h, _ConsoleHandler):
            root.removeHandler(h)
    root.addHandler(_ConsoleHandler())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if not verbose:
        warnings.simplefilter("ignore")  # TensorFlow/Keras/tf2onnx deprecation and converter warnings


def quiet_native_stderr() -> bool:
    """Route file descriptor 2 through the noise filter for the rest of the process (and its children).

    Does nothing with ``--verbose``, when stderr is not a real file descriptor (in-process tests), or
    when already done. Returns whether the filter is in place.
    """
    global _filter
    if _filter is not None:
        return True
    if settings.verbose:
        return False
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return False
    except (AttributeError, ValueError, OSError):
        return False
    real = os.dup(2)
    source = _FILTER_SOURCE % (NATIVE_NOISE.pattern, NATIVE_CONTINUATION.pattern)
    try:
        _filter = subprocess.Popen([sys.executable, "-S", "-c", source, str(real)], stdin=subprocess.PIPE,
                                   pass_fds=(real,), close_fds=True)
    except OSError:
        os.close(real)
        return False
    sys.stderr.flush()
    os.dup2(_filter.stdin.fileno(), 2)
    _filter.stdin.close()  # fd 2 is now the only write end we hold

    import atexit

    def restore() -> None:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(real, 2)  # closes our write end: the filter sees EOF once children are done too
        try:
            _filter.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    atexit.register(restore)
    return True
