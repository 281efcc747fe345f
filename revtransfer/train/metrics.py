"""Per-epoch metrics as JSON lines, and peak memory in a device-appropriate sense."""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

from revtransfer.atomic import atomic_write_text


class MetricsLog:
    """Append-only ``metrics.jsonl``; each line is flushed and fsynced as it is written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, epoch: int) -> None:
        """Keep only records of epochs <= ``epoch`` (a resumed run redoes later epochs)."""
        if not self.path.exists():
            return
        keep = [line for line in self.read_lines() if json.loads(line).get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def read_lines(self) -> list[str]:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        out = []
        for line in lines:
            try:
                json.loads(line)
                out.append(line)
            except json.JSONDecodeError:  # a line torn by a crash mid-write
                continue
        return out

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.read_lines()]

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak MB, kind): CUDA max allocated since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"
