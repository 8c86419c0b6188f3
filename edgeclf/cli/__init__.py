"""The `edgeclf` command. Each command lives in its own module here, parses options and calls one
library function. Nothing here imports TensorFlow at module level: `edgeclf --help` and `edgeclf run`
never load it.

Every command takes ``--verbose`` (library debug messages, and TensorFlow's own logs, which are
silenced otherwise) and ``--debug`` (tracebacks for errors; also ``EDGECLF_DEBUG=1``).
"""
from __future__ import annotations

import sys
import traceback

import click

from edgeclf import log
from edgeclf.errors import EdgeclfError, first_line

EXIT_INTERNAL = 1


def _set_verbose(ctx, param, value) -> None:
    log.configure(verbose=bool(value) or log.settings.verbose)


def _set_debug(ctx, param, value) -> None:
    if value:
        log.settings.debug = True


def common_options(command):
    """``--verbose`` and ``--debug`` on a command (they may also come before it: ``edgeclf --debug train``)."""
    command = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                           help="Print the traceback of an error (also EDGECLF_DEBUG=1).")(command)
    command = click.option("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True,
                           callback=_set_verbose, help="More detail, TensorFlow's own log lines included.")(command)
    return command


class _Group(click.Group):
    """Turns errors into one line and a non-zero exit; ``--debug`` adds the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeclfError as exc:
            if log.settings.debug:
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(f"error: {first_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug of ours or a library's: still one line, the traceback on request
            if log.settings.debug:
                traceback.print_exception(exc, file=sys.stderr)
                hint = ""
            else:
                hint = " (run again with --debug for the traceback)"
            click.echo(f"error: unexpected {type(exc).__name__}: {first_line(exc)}{hint}", err=True)
            sys.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgeclf")
@common_options
def main() -> None:
    """From a folder of labelled photos to a quantized image classifier on an edge device.

    \b
      edgeclf train DATA --model mobilenet_v2      fine-tune an ImageNet backbone
      edgeclf export runs/train/exp --int8         TFLite and ONNX, verified
      edgeclf bench runs/train/exp/export --data DATA
      edgeclf run runs/train/exp/export --source 0 webcam, video, RTSP or folder
      edgeclf label field/                        label the frames run --collect kept
      edgeclf report runs/train/exp               rebuild the run's page, report.html
      edgeclf sweep DATA --max-latency 5          the most accurate backbone x size within a budget
    """


def _register() -> None:
    from edgeclf.cli import bench, check, export, label, report, run, service, sweep, train

    for module in (check, train, export, bench, run, label, report, sweep, service):
        main.add_command(common_options(module.command))


_register()
