import click


@click.command("check")
def command() -> None:
    """(being written)"""
    raise click.ClickException("not written yet")
