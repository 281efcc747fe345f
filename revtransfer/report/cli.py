"""`revtransfer report`."""
from __future__ import annotations

import click


@click.command()
@click.option("--results", multiple=True, type=click.Path(exists=True),
              help="Results table dir (or results.parquet) of sweeps / detection runs; repeatable.")
@click.option("--bench", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="`revtransfer bench` JSON file; repeatable.")
@click.option("--datasets", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset dir, or a dir searched for dataset manifests; repeatable.")
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--title", default="revtransfer report", show_default=True)
def report(results, bench, datasets, out, title):
    """Write Markdown/CSV/LaTeX tables, PNG plots and a README.md index to --out."""
    from revtransfer.provenance import resolved_command
    from revtransfer.report.build import build_report

    index = build_report(out, results, bench, datasets, title, resolved_command(click.get_current_context()))
    click.echo(f"report: {index}")
