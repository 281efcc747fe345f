"""`revtransfer report`."""
from __future__ import annotations

import click


@click.command()
@click.option("--results", multiple=True, type=click.Path(exists=True),
              help="Results table dir (or results.parquet) of sweeps / detection runs; repeatable.")
@click.option("--bench", multiple=True,
              help="`revtransfer bench` JSON file or a quoted glob of them ('reports/bench/gpu/*.json'); repeatable.")
@click.option("--datasets", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset dir, or a dir searched for dataset manifests; repeatable.")
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--title", default="revtransfer report", show_default=True)
def report(results, bench, datasets, out, title):
    """Write Markdown/CSV/LaTeX tables, PNG plots and a README.md index to --out."""
    import glob

    from revtransfer.provenance import resolved_command
    from revtransfer.report.build import build_report

    files = []
    for pattern in bench:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise click.BadParameter(f"{pattern!r} matches no file", param_hint="--bench")
        files += matches
    bench = files
    index = build_report(out, results, bench, datasets, title, resolved_command(click.get_current_context()))
    click.echo(f"report: {index}")
