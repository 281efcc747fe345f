"""How exactly a reversible stack's inputs are reconstructed from its outputs, as depth grows.

Reprop and PaReprop rebuild every block's input from its output; in float32 the rounding error of
each inverse compounds with depth. This measures max |x - inverse(forward(x))| / max |x| per depth.
"""
from __future__ import annotations

import contextlib

import torch

from revtransfer.bench.throughput import image_input_size
from revtransfer.models import create_model
from revtransfer.reversible import ReversibleStack


def reconstruction_errors(model_name: str, depths, batch_size: int = 2, dtype=torch.float32, device="cpu",
                          model_kwargs: dict | None = None, seed: int = 0) -> list[dict]:
    records = []
    for depth in depths:
        torch.manual_seed(seed)
        # built on the device (a GPU initialises a deep model's weights in a fraction of the CPU's time)
        on = torch.device(device) if torch.device(device).type != "cpu" else contextlib.nullcontext()
        with on:
            model = create_model(model_name, **dict(model_kwargs or {}, depth=depth))
        model = model.to(device=device, dtype=dtype).eval()
        stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
        if not stacks:
            raise ValueError(f"{model_name} has no reversible stack")
        stack = stacks[0]
        tokens = model.patch_embed(torch.randn(batch_size, *image_input_size(model), device=device, dtype=dtype))
        with torch.no_grad():
            x1 = x2 = tokens.reshape(batch_size, -1, tokens.shape[-1])
            y1, y2 = stack(x1, x2)
            r1, r2 = stack.inverse(y1, y2)
        scale = torch.stack([x1.abs().max(), x2.abs().max()]).max()
        err = torch.stack([(r1 - x1).abs().max(), (r2 - x2).abs().max()]).max() / scale
        records.append({"model": model_name, "depth": depth, "dtype": str(dtype).removeprefix("torch."),
                        "max_rel_error": err.item(), "device": str(device)})
    return records
