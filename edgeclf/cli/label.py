"""`edgeclf label`: a local page to label the frames `edgeclf run --collect DIR` kept."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("label")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--serve", "bind", metavar="[HOST:]PORT", default="127.0.0.1:8090", show_default=True,
              help="Where the page listens. Host 127.0.0.1 unless given; any other address needs --token.")
@click.option("--token", envvar="EDGECLF_TOKEN", default=None, show_envvar=True,
              help="Bearer token the page and API then ask for (the page takes it once, as ?token=).")
@click.option("--classes", default=None, metavar="A,B",
              help="The classes offered, in this order (keys 1-9) [default: the model's, from DIR].")
def command(folder: Path, bind: str, token: str | None, classes: str | None) -> None:
    """Label the frames in FOLDER (from `edgeclf run ... --collect FOLDER`) in a local page.

    Answers are saved at once to FOLDER/labels.csv (columns file,label; an empty label: discarded);
    a restart continues where it stopped. On a laptop, copy the folder from the device first:

    \b
      rsync -a pi@camera.local:field/ field/
      edgeclf label field/                        then open http://127.0.0.1:8090/
      edgeclf label field/ --serve 0.0.0.0:8090 --token SECRET   on the device itself
    """
    from edgeclf.label.server import serve_labels

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    serve_labels(folder, bind=bind, token=token, classes=names, echo=lambda m: click.echo(m, err=True))
