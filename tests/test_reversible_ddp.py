"""DistributedDataParallel (CPU, gloo, 2 processes) gives the gradients of one process."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import revtransfer

MODEL_KW = dict(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=3,
                drop_path_rate=0.0, backprop="backprop")


def _model(mode):
    torch.manual_seed(0)
    return revtransfer.create_model("revvit_micro", **dict(MODEL_KW, backprop=mode)).double().train()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def _worker(rank, world, init_file, mode, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model(mode))
        x, y = _batch()
        shard = slice(rank * 4, rank * 4 + 4)
        for _ in range(2):  # two steps of accumulation exercise the reducer's hooks twice
            torch.nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        if rank == 0:
            grads = {n: p.grad for n, p in model.module.named_parameters()}
            torch.save(grads, os.path.join(out_dir, f"{mode}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_ddp_two_processes_match_one_process(mode, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), mode, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / f"{mode}.pt")
    model = _model("backprop")
    x, y = _batch()
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        err = ((ddp[name] - p.grad).abs().max() / p.grad.abs().max()).item()
        assert err <= 1e-10, f"{name}: {err}"
