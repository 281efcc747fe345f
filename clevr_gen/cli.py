"""`revtransfer gen`: generate a CLEVR-style dataset (thin: parse, build a DatasetSpec, generate).

Imports nothing heavy at module level beyond click, and never torch.
"""
from __future__ import annotations

import click

from . import presets as _presets
from .spec import COCO_CATEGORY_MODES, DEFAULT_X, DEFAULT_Y, SPLITS, parse_size


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@click.command("gen", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Generate a CLEVR-style dataset with exact P(X), P(Y), Corr(X, Y).")
@click.option("--preset", type=click.Choice(list(_presets.PRESETS)), default=None,
              help="A dataset of the study's table (see --list-presets); --n scales it down.")
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="pretrain: P(X), P(Y), Corr as given; transfer: X never present.  "
                   "[default: pretrain]")
@click.option("--p-x", "p_x", type=float, default=None, help="Target P(X) (pretrain).")
@click.option("--p-y", "p_y", type=float, default=None, help="Target P(Y).")
@click.option("--corr", type=float, default=None,
              help="Target Corr(X,Y), the phi coefficient (pretrain); must lie in the feasible "
                   "(Frechet) range for P(X), P(Y).")
@click.option("--n", type=int, default=None, help="Number of images (overrides a preset's).")
@click.option("--x", "x", default=None, show_default=DEFAULT_X,
              help="X: attribute conjunction, e.g. 'rubber green sphere'.")
@click.option("--y", "y", default=None, show_default=DEFAULT_Y,
              help="Y: attribute conjunction, e.g. 'metal yellow cube'.")
@click.option("--size", default="80", show_default=True,
              help="Image size: N for NxN or WIDTHxHEIGHT (e.g. 320x240, CLEVR's).")
@click.option("--min-pixels", type=int, default=None,
              help="Visible pixels every object must show (default scales CLEVR's 200 at 320x240 "
                   "with image area: 17 at 80x80).")
@click.option("--min-objects", type=int, default=3, show_default=True)
@click.option("--max-objects", type=int, default=10, show_default=True)
@click.option("--supersample", type=int, default=2, show_default=True,
              help="Anti-aliasing: sub-pixels per pixel side.")
@click.option("--seed", type=int, default=None, help="Seed (default: the preset's, else 0).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes; the output bytes do not depend on it.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (created; re-running resumes an unfinished run).")
@click.option("--coco/--no-coco", default=False, show_default=True,
              help="Also write coco.json (instance masks as RLE).")
@click.option("--coco-categories", type=click.Choice(COCO_CATEGORY_MODES), default="shape",
              show_default=True, help="COCO categories: per shape, or per shape+color+material.")
@click.option("--png", is_flag=True, help="Write images/NNNNNN.png instead of images.npy.")
@click.option("--shard-size", type=int, default=None,
              help="Scenes per resumable shard (default 250; fixed when a run starts).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def gen(preset, list_presets, split, p_x, p_y, corr, n, x, y, size, min_pixels, min_objects,
        max_objects, supersample, seed, workers, out, coco, coco_categories, png, shard_size,
        quiet):
    """Generate a CLEVR-style dataset with exact P(X), P(Y) and Corr(X, Y).

    \b
    Examples:
      revtransfer gen --preset pretrain-corr0.80 --n 2000 --out data/pre80 --workers 2
      revtransfer gen --p-x 0.5 --p-y 0.5 --corr 0.8 --n 1000 --size 320x240 --coco --out d
      revtransfer gen --split transfer --p-y 0.56 --n 500 --out data/transfer
    """
    from .labels import InfeasibleTargetError
    from .spec import DatasetSpec

    if list_presets:
        click.echo(_presets.describe_presets())
        return
    if out is None:
        raise click.UsageError("--out DIR is required")
    try:
        fields = _spec_fields(preset, split, p_x, p_y, corr, n, seed)
        width, height = parse_size(size)
        spec = DatasetSpec(
            **fields, x=x or DEFAULT_X, y=y or DEFAULT_Y, width=width, height=height,
            min_pixels=min_pixels, min_objects=min_objects, max_objects=max_objects,
            supersample=supersample, coco=coco, coco_categories=coco_categories,
            image_format="png" if png else "npy")
    except (ValueError, InfeasibleTargetError) as e:
        raise click.UsageError(str(e)) from None

    from .writer import DEFAULT_SHARD_SIZE, DatasetDirError, generate
    try:
        manifest = generate(spec, out, workers=workers,
                            shard_size=shard_size or DEFAULT_SHARD_SIZE, progress=not quiet,
                            preset=preset, log=click.echo)
    except (DatasetDirError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted: finished shards are kept in {out}/.partial; re-run the same command to "
            f"resume") from None
    m = manifest["measured"]
    click.echo(f"{out}: {m['n']} images {spec.width}x{spec.height}; measured P(X)={_fmt(m['p_x'])} "
               f"P(Y)={_fmt(m['p_y'])} Corr(X,Y)={_fmt(m['corr'])} cells={m['cells']}")


def _spec_fields(preset, split, p_x, p_y, corr, n, seed) -> dict:
    """Spec fields from a preset (with --n/--seed overrides) or from explicit targets."""
    if preset is not None:
        given = [f"--{k}" for k, v in (("split", split), ("p-x", p_x), ("p-y", p_y),
                                       ("corr", corr)) if v is not None]
        if given:
            raise ValueError(f"--preset {preset} fixes the targets; drop {', '.join(given)} "
                             f"(only --n, --seed and rendering options may change a preset)")
        fields = _presets.preset(preset)
        if n is not None:
            fields["n"] = n
        if seed is not None:
            fields["seed"] = seed
        return fields
    split = split or "pretrain"
    if p_y is None:
        raise ValueError("give --preset NAME, or the targets: --p-y (and --p-x, --corr for "
                         "the pretrain split)")
    if split == "pretrain" and (p_x is None or corr is None):
        raise ValueError("split pretrain needs --p-x and --corr as well as --p-y")
    if split == "transfer" and ((p_x not in (None, 0)) or corr is not None):
        raise ValueError("split transfer has no X: drop --p-x and --corr")
    if n is None:
        raise ValueError("--n is required without --preset")
    return dict(split=split, n=n, p_x=p_x if split == "pretrain" else 0.0, p_y=p_y,
                corr=corr if split == "pretrain" else None,
                seed=0 if seed is None else seed)
