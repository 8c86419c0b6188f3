"""The `edgeclf` command. Each command lives in its own module here, parses options and calls one
library function. Nothing here imports TensorFlow at module level: `edgeclf --help` and `edgeclf run`
never load it."""
from __future__ import annotations

import sys

import click

from edgeclf.errors import EdgeclfError


class _Group(click.Group):
    """Turns user-facing errors into one line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeclfError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgeclf")
def main() -> None:
    """From a folder of labelled photos to a quantized image classifier on an edge device.

    \b
      edgeclf train DATA --model mobilenet_v2      fine-tune an ImageNet backbone
      edgeclf export runs/train/exp --int8         TFLite and ONNX, verified
      edgeclf bench runs/train/exp/export --data DATA
      edgeclf run runs/train/exp/export --source 0 webcam, video, RTSP or folder
    """


def _register() -> None:
    from edgeclf.cli import bench, check, export, run, train

    for module in (check, train, export, bench, run):
        main.add_command(module.command)


_register()
