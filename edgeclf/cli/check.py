from __future__ import annotations

import click

from edgeclf.config import TrainConfig, default


@click.command("check")
@click.argument("data", type=click.Path(path_type=str))
@click.option("--val-split", default=0.2, show_default=True, help="Validation share when DATA is not split.")
@click.option("--holdout", default=default(TrainConfig, "holdout"), show_default=True,
              help="Share of the training images `edgeclf train` holds out for export's int8 search.")
@click.option("--seed", default=0, show_default=True, help="Seed of that split.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(data: str, val_split: float, holdout: float, seed: int, as_json: bool) -> None:
    """Check a data folder without training: classes, counts per split, files that are not usable
    images, identical files across classes (label conflicts) and across splits (leaks)."""
    import json

    from edgeclf.data.dataset import print_report, scan

    ds = scan(data, val_split=val_split, seed=seed, holdout=holdout)
    if as_json:
        click.echo(json.dumps(ds.report.to_dict(), indent=2, ensure_ascii=False))
    else:
        from edgeclf.log import table_console

        print_report(ds.report, table_console())
