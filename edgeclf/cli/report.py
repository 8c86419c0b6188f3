from __future__ import annotations

import click


@click.command("report")
@click.argument("run", type=click.Path(path_type=str))
def command(run: str) -> None:
    """Rebuild RUN/report.html: the page of a run folder (curves, confusion matrix, per-class figures, the
    data report, the validation images it gets wrong, and the export and bench folders that export and bench
    noted for it: formats, int8 recipes and search, int8-against-float disagreements, bench per device).

    train, export and bench keep it up to date themselves; this rebuilds it, e.g. after moving folders.
    One file, images embedded: open it in any browser, offline.
    """
    from edgeclf.page import build

    click.echo(f"report: {build(run)}")
