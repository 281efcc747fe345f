"""What every output records about how it was made: git commit, library versions, machine, time."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

_PACKAGES = ("torch", "torchvision", "timm", "numpy", "numba", "pillow", "detectron2", "scikit-learn",
             "faster-coco-eval", "pycocotools", "revtransfer")  # those installed are recorded


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the checkout this code runs from, '+dirty' if modified; outside a git checkout (e.g. a
    copied tree on a GPU machine) the value of $REVTRANSFER_GIT_COMMIT, else None."""
    cwd = cwd or Path(__file__).resolve().parent
    fallback = os.environ.get("REVTRANSFER_GIT_COMMIT")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return fallback
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return fallback


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name if name != "detectron2" else "sal-detectron2")
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> dict:
    """The CPU's model name and its bf16 units (AMX on Intel, AVX512-BF16 on AMD Zen 4): what a CPU
    timing depends on. Empty where /proc/cpuinfo is not there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.processor()),
            "cpu_bf16": [f for f in ("amx_bf16", "avx512_bf16") if f in flags]}


def machine() -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            **cpu_model()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def resolved_command(ctx) -> list[str]:
    """The command line of a click command with every option resolved (defaults included), so the
    record says exactly what ran even when the user relied on defaults."""
    args = ["revtransfer", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == () or not param.opts:
            continue
        flag = param.opts[0]
        if isinstance(value, bool):
            if value:
                args.append(flag)
            continue
        for v in value if isinstance(value, (tuple, list)) else [value]:
            args += [flag, str(v)]
    return args


def utc_now() -> str:
    """The time every record carries: UTC, ISO 8601, to the second (2026-12-01T01:02:03+00:00)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(command: list[str] | None = None) -> dict:
    return {
        "command": " ".join(command if command is not None else sys.argv),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "machine": machine(),
        "date": utc_now(),
    }
