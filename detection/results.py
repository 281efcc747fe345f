"""Detection rows for the shared results table (``revtransfer.results.ResultsTable``: results.parquet +
results.csv, locked, atomic upserts), in the columns probes and ``revtransfer report`` use.

A row's key is ``(sweep="detection", cell_id)``, the cell id naming the run directory, the mode and
the weights evaluated: re-running (or resuming) the same run replaces its row instead of adding one.
"""
from __future__ import annotations

import json
import os

SWEEP = "detection"
# The six summary numbers detectron2 reports per task; per-class APs stay in eval_results.json.
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASK_PREFIX = {"bbox": "box", "segm": "mask"}


def metrics_columns(metrics: dict) -> dict:
    """``{"bbox": {"AP": ..}, "segm": {..}}`` -> ``{"box_AP": .., ..., "mask_APl": ..}`` (NaN where COCO
    cannot compute a number, e.g. no large objects)."""
    return {f"{prefix}_{m}": float(metrics.get(task, {}).get(m, float("nan")))
            for task, prefix in TASK_PREFIX.items() for m in SUMMARY_METRICS}


def backbone_role(info: dict) -> str:
    """What a run's backbone is in a study: ``frozen`` (pretrained weights, frozen: the measure),
    ``floor`` (frozen at random initialisation: what the heads learn alone) or ``ceiling``
    (trainable: fine-tuned from its weights)."""
    if not info.get("frozen", True):
        return "ceiling"
    return "frozen" if info.get("backbone_checkpoint") else "floor"


EVAL_HISTORY = "eval_history.json"  # a run's held-out AP after every evaluation (detection.train_net)


def read_eval_history(output_dir) -> list[dict]:
    from pathlib import Path

    path = Path(output_dir) / EVAL_HISTORY
    return json.loads(path.read_text()) if path.exists() else []


def ap_history(output_dir) -> str | None:
    """The run's eval history as compact JSON, kept in its row so that a report's AP-against-iterations
    plot needs only the table, not the run dir."""
    keys = ("iteration", "bbox_AP", "segm_AP", "wall_s")
    history = read_eval_history(output_dir)
    return json.dumps([{k: h[k] for k in keys if k in h} for h in history], separators=(",", ":")) if history else None


def detection_row(info: dict, metrics: dict) -> dict:
    """One table row from a run's ``run.json`` content and its AP dict."""
    vers = info.get("versions", {})
    load = info.get("backbone_load") or {}
    cell = f"{info['mode']}:{os.path.abspath(info['output_dir'])}" + (f":{info['weights']}" if info.get("weights") else "")
    return {
        "sweep": SWEEP, "cell_id": cell, "status": "ok",
        "arch": info["arch"], "seed": info["seed"], "dataset": info["dataset"],
        "config": info["config"], "mode": info["mode"], "iterations": info["iterations"],
        "backbone_checkpoint": info["backbone_checkpoint"], "frozen": info["frozen"],
        "backbone_role": backbone_role(info), "tag": info.get("tag", ""),
        "backbone_keys_matched": load.get("keys_matched"), "precision": info.get("precision"),
        "box_AP_change_last_fifth": info.get("box_AP_change_last_fifth"),
        "ap_history": ap_history(info["output_dir"]),
        "val_dataset": info["val_dataset"], "batch_size": info["batch_size"],
        **metrics_columns(metrics),
        "wall_time_s": info["wall_time_s"], "device": info["device"], "world_size": info["world_size"],
        "threads": info.get("threads"),
        "git_commit": info["git_commit"], "torch_version": vers.get("torch"), "timm_version": vers.get("timm"),
        "detectron2_version": vers.get("detectron2"), "versions": json.dumps(vers, sort_keys=True),
        "run_dir": info["output_dir"], "finished_at": info["finished_at"],
    }


def append_detection_row(table_dir: str | os.PathLike, info: dict, metrics: dict) -> dict:
    from revtransfer.results import ResultsTable

    row = detection_row(info, metrics)
    ResultsTable(table_dir).upsert([row])
    return row


__all__ = ["SWEEP", "append_detection_row", "detection_row", "metrics_columns"]
