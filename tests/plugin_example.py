"""A third-party package's subcommand, as the plugin test registers it."""
import click


@click.command(short_help="Say hello.")
@click.option("--name", default="world")
def hello(name):
    if name == "bad":
        raise ValueError(f"name={name!r} is not allowed")
    click.echo(f"hello {name}")
