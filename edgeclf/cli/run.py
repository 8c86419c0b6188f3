import click


@click.command("run")
def command() -> None:
    """(being written)"""
    raise click.ClickException("not written yet")
