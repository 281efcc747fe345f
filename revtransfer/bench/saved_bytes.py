"""Activation bytes a training step keeps for backward, per model and backward mode.

    python -m revtransfer.bench.saved_bytes --out reports/bench/saved_bytes/saved_bytes_cpu.json

What is counted (:func:`activation_bytes`), over one forward + cross-entropy on random labels in
train mode, before the backward runs:

* ``saved``: every tensor autograd saves for backward, as ``saved_tensors_hooks`` sees it: the
  saved tensors of autograd's own nodes and what custom Functions pass to ``save_for_backward``.
* ``held``: tensors custom Functions keep on their ``ctx`` from Python (found by walking the
  graph from the loss): the reversible stack's ``keep_last`` graphs (block inputs, sublayer
  outputs), which no hook sees.
* ``rng``: the RNG snapshots the reversible stack keeps per block (a few KB each: not
  activations, reported apart and not in the total).

Each storage counts once (deduplicated by its data pointer, so a view or a tensor saved twice is
not counted twice; ``revtransfer.bench.throughput._saved_bytes`` and ``tests/helpers.py`` also
count storages once), and the model's parameters and buffers are excluded. ``saved_mb`` is
``saved + held`` in MB (10^6 bytes). The model's grads, the optimizer and transient tensors of the
forward are not activations kept for backward and are not counted; this is what a training step
holds between its forward and its backward, which is what the backward modes change.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import click
import torch
from torch import nn

# reversible model -> (non-reversible reference, batch size, image size) of the default table
DEFAULT_CONFIGS = {
    "revvit_micro": ("vit_micro", 32, 80),
    "revswin_tiny": ("swin_tiny_patch4_window7_224", 8, 224),
    "revmvit_tiny": ("mvitv2_tiny", 8, 224),
}
REVERSIBLE_RUNS = (("backprop", False), ("reprop", False), ("pareprop", False), ("reprop", True), ("pareprop", True))
MB = 1e6


@dataclass
class SavedBytes:
    saved: int  # storages packed by saved_tensors_hooks
    held: int   # further storages kept on custom Functions' ctx from Python
    rng: int    # RNG snapshots on ctx (not activations; not in total)

    @property
    def total(self) -> int:
        return self.saved + self.held


def _tensors_in(obj, out: list, in_rng: bool = False, depth: int = 0) -> None:
    """Collect (tensor, is_rng_snapshot) from what a ctx holds: containers, dataclasses, slotted
    objects (RNG snapshots); modules are parameters, not activations, and are skipped."""
    from revtransfer.reversible.state import RNGState

    if depth > 8 or isinstance(obj, nn.Module):
        return
    if isinstance(obj, torch.Tensor):
        out.append((obj, in_rng))
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _tensors_in(v, out, in_rng, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _tensors_in(v, out, in_rng, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _tensors_in(getattr(obj, f.name), out, in_rng, depth + 1)
    elif isinstance(obj, RNGState):
        _tensors_in(obj.cpu, out, True, depth + 1)
        _tensors_in(obj.cuda, out, True, depth + 1)


def _held_by_ctx(root) -> list:
    """Tensors the custom Functions in the graph under ``root`` keep on their ctx."""
    found, seen, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            _tensors_in(vars(node), found)
        todo.extend(fn for fn, _ in node.next_functions)
    return found


def activation_bytes(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> SavedBytes:
    """Bytes one training step of ``model`` on ``x`` keeps for backward (see the module docstring).
    Runs the backward too (so the step is complete and the graph freed)."""
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        labels = torch.randint(0, out.shape[-1] if num_classes is None else num_classes, (out.shape[0],),
                               device=out.device)
        loss = nn.functional.cross_entropy(out.float(), labels)
    held: dict[int, int] = {}
    rng: dict[int, int] = {}
    for t, is_rng in _held_by_ctx(loss.grad_fn):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in excluded or ptr in saved:
            continue
        (rng if is_rng else held).setdefault(ptr, storage.nbytes())
    loss.backward()
    return SavedBytes(sum(saved.values()), sum(held.values()), sum(rng.values()))


def _depth(model: nn.Module) -> int:
    """Blocks of the model: reversible couplings, or timm's blocks (reference models)."""
    from revtransfer.reversible import ReversibleCoupling

    rev = sum(isinstance(m, ReversibleCoupling) for m in model.modules())
    if rev:
        transitions = sum(type(m).__name__ == "MViTTransition" for m in model.modules())
        return rev + transitions  # a Rev-MViT stage's first block is a non-reversible transition
    names = ("Block", "SwinTransformerBlock", "MultiScaleBlock")
    return sum(type(m).__name__ in names for m in model.modules())


def build(name: str, **kwargs) -> nn.Module:
    """The model at its default input size, without stochastic depth (timm's Swin defaults to 0.1,
    ours to 0: a drop-path mask would be an activation of one model only)."""
    from revtransfer.models import create_model

    torch.manual_seed(0)
    return create_model(name, **dict(dict(drop_path_rate=0.0), **kwargs))


def measure(name: str, batch_size: int, image_size: int, mode: str | None = None, keep_last: bool = False,
            reference_of: str | None = None, device: str = "cpu", **kwargs) -> dict:
    """One record: ``name`` in ``mode`` (None: a non-reversible reference, plain autograd)."""
    from revtransfer.models import is_reversible

    model = build(name, **kwargs).to(device)
    if mode is not None:
        model.set_backprop(mode, keep_last)
    elif is_reversible(model):
        raise ValueError(f"{name} is reversible: give a mode")
    torch.manual_seed(1)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    b = activation_bytes(model, x)
    return {
        "model": name,
        "reference_of": reference_of,
        "mode": mode or "backprop",
        "keep_last_activations": keep_last if mode is not None else None,
        "precision": "fp32",
        "batch_size": batch_size,
        "image_size": [image_size, image_size],
        "depth": _depth(model),
        "saved_mb": round(b.total / MB, 3),
        "saved_by_hooks_mb": round(b.saved / MB, 3),
        "held_on_ctx_mb": round(b.held / MB, 3),
        "rng_snapshots_kb": round(b.rng / 1e3, 1),
        "input_mb": round(x.numel() * x.element_size() / MB, 3),
        "device": device,
        "torch": torch.__version__,
        **({"model_kwargs": kwargs} if kwargs else {}),
    }


def run(models, batch_size: int | None, depth_sweep, device: str, progress=None) -> tuple[list, list]:
    """The table (each reversible model in every mode, then its reference) and a depth sweep of
    revvit_micro (reprop / pareprop at depths ``depth_sweep``, with the table's shape)."""
    records = []
    for name in models:
        reference, bs, size = DEFAULT_CONFIGS[name]
        bs = batch_size or bs
        for mode, keep_last in REVERSIBLE_RUNS:
            records.append(measure(name, bs, size, mode, keep_last, device=device))
            progress and progress(records[-1])
        records.append(measure(reference, bs, size, reference_of=name, device=device))
        progress and progress(records[-1])
    sweep = []
    if depth_sweep and "revvit_micro" in models:
        _, bs, size = DEFAULT_CONFIGS["revvit_micro"]
        for mode in ("backprop", "reprop", "pareprop"):
            for depth in depth_sweep:
                sweep.append(measure("revvit_micro", batch_size or bs, size, mode, device=device, depth=depth))
                progress and progress(sweep[-1])
    return records, sweep


def format_table(records: list) -> str:
    lines = [f"{'model':<30} {'mode':<20} {'batch':>5} {'image':>5} {'depth':>5} {'saved MB':>10} "
             f"{'held MB':>8}"]
    for r in records:
        mode = r["mode"] + (" +keep_last" if r.get("keep_last_activations") else "")
        lines.append(f"{r['model']:<30} {mode:<20} {r['batch_size']:>5} {r['image_size'][0]:>5} {r['depth']:>5} "
                     f"{r['saved_mb']:>10.2f} {r['held_on_ctx_mb']:>8.2f}")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


@click.command()
@click.option("--models", default=",".join(DEFAULT_CONFIGS), show_default=True,
              help=f"Reversible models to measure (each with its reference): any of {', '.join(DEFAULT_CONFIGS)}.")
@click.option("--batch-size", type=int, default=None,
              help="Batch size for every model (default: revvit_micro 32, revswin_tiny 8, revmvit_tiny 8).")
@click.option("--depth-sweep", default="2,4,8", show_default=True,
              help="Depths of revvit_micro to measure in every mode ('' to skip).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the records as JSON here.")
def main(models, batch_size, depth_sweep, device, threads, out):
    """Activation bytes kept for backward (storage-deduplicated, parameters excluded), per backward mode."""
    from revtransfer.atomic import atomic_write_json
    from revtransfer.provenance import provenance, resolved_command

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in DEFAULT_CONFIGS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}; choose from {', '.join(DEFAULT_CONFIGS)}",
                                 param_hint="--models")
    if threads:
        torch.set_num_threads(threads)

    def progress(r):
        mode = r["mode"] + (" +keep_last" if r.get("keep_last_activations") else "")
        click.echo(f"  {r['model']} {mode} depth {r['depth']} bs {r['batch_size']}: {r['saved_mb']:.2f} MB",
                   err=True)

    records, sweep = run(names, batch_size, _ints(depth_sweep), device, progress)
    click.echo(format_table(records))
    if sweep:
        click.echo("\nrevvit_micro depth sweep\n" + format_table(sweep))
    if out:
        command = ["python", "-m", "revtransfer.bench.saved_bytes", *resolved_command(click.get_current_context())[2:]]
        meta = provenance(command)
        meta.update(device=device, torch_threads=torch.get_num_threads(), precision="fp32",
                    counting="storages deduplicated by data pointer; parameters and buffers excluded; "
                             "saved_mb = saved_by_hooks_mb + held_on_ctx_mb (RNG snapshots apart)")
        for r in (*records, *sweep):
            r.update(git_commit=meta["git_commit"], command=meta["command"])
        atomic_write_json(out, {"meta": meta, "records": records, "depth_sweep": sweep})
        click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main(sys.argv[1:], prog_name="python -m revtransfer.bench.saved_bytes")
