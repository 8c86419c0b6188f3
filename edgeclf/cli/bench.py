import click


@click.command("bench")
def command() -> None:
    """(being written)"""
    raise click.ClickException("not written yet")
