import click


@click.command("train")
def command() -> None:
    """(being written)"""
    raise click.ClickException("not written yet")
