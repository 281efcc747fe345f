"""DistributedDataParallel pretraining (CPU, gloo, 2 processes) ends with the weights of one process
training on the same global batches."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from study_fixtures import TINY_VIT, write_dataset

from revtransfer.train import PretrainConfig, build_model, load_checkpoint, pretrain


def _config(dataset, out):
    # fp64 so that the different summation order of the all-reduce stays far below the tolerance
    return PretrainConfig(dataset=str(dataset), out=str(out), arch="revvit_micro", backprop="pareprop",
                          model_kwargs=dict(TINY_VIT), epochs=2, batch_size=16, lr=2e-3, val_frac=0.2,
                          precision="fp64", device="cpu", prefetch=1)


def _worker(rank, world, init_file, dataset, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        pretrain(_config(dataset, out), progress=False)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    dataset = write_dataset(tmp_path / "data", n=100, size=16)  # 80 train images: 5 batches of 16
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(dataset), str(tmp_path / "ddp")), nprocs=2)
    single = pretrain(_config(dataset, tmp_path / "single"), progress=False)

    ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoint_last.pt")
    one_state = load_checkpoint(tmp_path / "single" / "checkpoint_last.pt")
    assert ddp_state["epoch"] == one_state["epoch"] == 2
    assert len(ddp_state["rng"]) == 2  # each rank's RNG state, for an exact DDP resume
    for k, v in one_state["model"].items():
        err = (ddp_state["model"][k] - v).abs().max().item()
        assert err < 1e-10, f"{k}: DDP differs from one process by {err:g}"
    # ... and training did move the weights, so the equality is not that of two untouched inits.
    torch.manual_seed(0)
    init = build_model(_config(dataset, tmp_path / "x"), (16, 16)).double().state_dict()
    moved = max((one_state["model"][k] - init[k]).abs().max().item() for k in init)
    assert single.n_train == 80 and moved > 1e-3
