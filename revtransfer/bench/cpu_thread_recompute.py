"""Does PaReprop pay on a CPU if block i-1's recompute runs on a second thread?

The house plan leaves it open: on CPU the schedule runs in program order, "or on a thread if a
measurement shows it pays". This is that measurement. It times the backward of a RevViT under
reprop, under pareprop in program order (what the engine does on CPU), and under a variant that
submits recover(i-1) to a worker thread while grads(i) runs, with torch's intra-op threads at each
of the given counts.

    python -m revtransfer.bench.cpu_thread_recompute --json reports/bench/cpu_thread_recompute.json
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from revtransfer.models import create_model
from revtransfer.reversible import schedule, stack
from revtransfer.reversible.lanes import Lane


def _threaded_backward(pool):
    def run_backward(blocks, rngs, y1, y2, dy1, dy2, side, autocast, lanes, wanted, last=None):
        # grads(i) draws no random numbers, so the worker may restore block i-1's RNG state meanwhile.
        n, lane = len(blocks), Lane()
        per_block = [None] * n
        rec = last or schedule.recover(blocks[n - 1], rngs[n - 1], y1, y2, side, autocast, lane, wanted)
        for i in range(n - 1, -1, -1):
            nxt = (pool.submit(schedule.recover, blocks[i - 1], rngs[i - 1], rec.x1, rec.x2, side, autocast, lane, wanted)
                   if i else None)
            dy1, dy2, f_grads, g_grads = schedule.grads(rec, dy1, dy2)
            per_block[i] = (f_grads, g_grads)
            rec = nxt.result() if nxt else None
        return dy1, dy2, per_block
    return run_backward


@contextlib.contextmanager
def _recompute_on_a_thread():
    original = stack.run_backward
    with ThreadPoolExecutor(1) as pool:
        stack.run_backward = _threaded_backward(pool)
        try:
            yield
        finally:
            stack.run_backward = original


def backward_ms(model, x, y, mode: str, on_thread: bool, steps: int, warmup: int) -> float:
    model.set_backprop(mode)
    times = []
    with _recompute_on_a_thread() if on_thread else contextlib.nullcontext():
        for _ in range(warmup + steps):
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            start = time.perf_counter()
            loss.backward()
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[warmup:])


def main(argv=None) -> None:
    from revtransfer.atomic import atomic_write_json
    from revtransfer.provenance import provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="4,12")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--torch-threads", default="2,1")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for threads in map(int, args.torch_threads.split(",")):
        torch.set_num_threads(threads)
        for depth in map(int, args.depths.split(",")):
            torch.manual_seed(0)
            model = create_model("revvit_micro", depth=depth, num_classes=2).train()
            x, y = torch.randn(args.batch_size, 3, 80, 80), torch.randint(0, 2, (args.batch_size,))
            row = {"model": "revvit_micro", "depth": depth, "batch_size": args.batch_size, "torch_threads": threads}
            for key, mode, on_thread in (("reprop_ms", "reprop", False), ("pareprop_in_order_ms", "pareprop", False),
                                         ("pareprop_thread_ms", "pareprop", True)):
                row[key] = round(backward_ms(model, x, y, mode, on_thread, args.steps, args.warmup), 1)
            row["thread_speedup_vs_reprop"] = round(row["reprop_ms"] / row["pareprop_thread_ms"], 3)
            rows.append(row)
            print(row, flush=True)
    if args.json:
        atomic_write_json(args.json, {"meta": provenance(), "rows": rows})


if __name__ == "__main__":
    main()
