"""Crash-safe file writes: write a temporary next to the target, fsync, then ``os.replace``.

A reader sees either the old file or the new one, never a torn write, because ``os.replace`` is
atomic within one file system (hence the temporary lives in the target's directory). The same
goes for a directory built under a temporary name (clevr_gen's PNG folder). Torch-free: clevr_gen
and every writer of revtransfer share this module.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

TMP_PREFIX = ".tmp-"  # temporaries are named .tmp-<pid>-<token>-<name>; a crash may leave them behind


def temp_name(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (nothing there yet) for the caller to write a file or build a
    directory at; on success it replaces ``path`` (a file fsynced first), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if tmp.is_dir():
            if path.exists():
                shutil.rmtree(path)
        else:
            with open(tmp, "rb+") as f:  # flush the data to disk before the rename makes it visible
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def clean_stale_temps(directory: str | os.PathLike) -> None:
    """Remove temporaries a crashed writer left in ``directory``."""
    for p in Path(directory).glob(f"{TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_jsonable) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def _jsonable(o: Any) -> Any:
    """numpy scalars/arrays and paths as plain JSON values."""
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
