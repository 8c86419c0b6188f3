import click


@click.command("export")
def command() -> None:
    """(being written)"""
    raise click.ClickException("not written yet")
