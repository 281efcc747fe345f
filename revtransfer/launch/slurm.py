"""SLURM through submitit: job resources, the executor, job records, job states and logs.

Resources (:class:`SlurmOptions`) come from command-line options and/or a ``launcher:`` mapping
(the sweep file's section), options winning::

    launcher:
      partition: gpu
      time: "4:00:00"          # minutes or [D-]HH:MM[:SS]; a job near it checkpoints and requeues
      gpus_per_task: 1
      cpus_per_task: 8
      mem: 32G                 # or a number of GB
      array_parallelism: 8     # sweep cells running at once
      account: my_account
      qos: normal
      sbatch: {constraint: volta32gb, exclusive: true}   # any other sbatch option
      setup: ["module load cuda/12.1"]                     # shell lines run before the job
      max_requeue: 3           # times a job may time out and requeue itself

Job states are read with ``squeue`` while a job is queued or running (slurmctld's live view) and with
``sacct`` once it has left the queue; a job that has left the queue is over, even where accounting
has not recorded its end yet (GONE). A job that is over without a result file was killed (cancelled, out of memory or time,
node failure): :meth:`JobRecord.log_tail` gives the last lines of its log.
"""
from __future__ import annotations

import contextlib
import getpass
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from revtransfer.atomic import atomic_write_text

from . import LaunchError

# States of a job that has not ended (it may still write its result). PREEMPTED is final: a requeued
# job shows REQUEUED / PENDING, since sacct gives the latest attempt.
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
    "RESIZING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED", "UNKNOWN"})
GONE = "GONE"  # neither sacct nor squeue knows the job any more: it is over
_OPTION_KEYS = ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism", "account", "qos",
                "sbatch", "setup", "max_requeue")
# sbatch options that submitit sets itself: overriding them breaks logs, arrays or requeueing.
_RESERVED_SBATCH = ("output", "error", "array", "signal", "open-mode", "nodes", "ntasks-per-node", "gpus-per-node")


# --- resources -----------------------------------------------------------------------------------
def parse_time(value) -> int:
    """A SLURM time limit as whole minutes: 90, "90", "1:30:00", "2-00:00:00", "30:00" (MM:SS)."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or isinstance(value, bool):
        raise LaunchError(f"time={value!r}: give minutes (90) or [D-]HH:MM:SS (1:30:00, 2-00:00:00)")
    days, a, b, c = m.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + a * 60 + b + c / 60
    elif m.group(4) is not None:  # HH:MM:SS
        minutes = a * 60 + b + c / 60
    elif m.group(3) is not None:  # MM:SS
        minutes = a + b / 60
    else:
        minutes = a
    if minutes <= 0:
        raise LaunchError(f"time={value!r}: the time limit must be positive")
    return math.ceil(minutes)


def parse_mem(value) -> str | None:
    """Memory per node as sbatch wants it: 32 (GB), "32G", "500M", "1.5T"."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise LaunchError(f"mem={value!r}: must be positive")
        return f"{int(value)}G" if float(value).is_integer() else f"{math.ceil(value * 1024)}M"
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])?B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise LaunchError(f"mem={value!r}: give a size like 32G, 500M or a number of GB")
    number, unit = float(m.group(1)), (m.group(2) or "G").upper()
    if number <= 0:
        raise LaunchError(f"mem={value!r}: must be positive")
    return f"{int(number)}{unit}" if number.is_integer() else parse_mem(number * {"K": 1 / 2**20, "M": 1 / 1024,
                                                                                  "G": 1, "T": 1024}[unit])


def parse_sbatch_args(items: Iterable[str]) -> dict[str, Any]:
    """("constraint=volta32gb", "--exclusive") -> {"constraint": "volta32gb", "exclusive": True}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).lstrip("-").partition("=")
        if not key.strip():
            raise LaunchError(f"--sbatch-arg {item!r}: give NAME=VALUE or NAME (e.g. constraint=volta32gb, exclusive)")
        out[key.strip()] = value if sep else True
    return out


def _positive_int(name: str, v, allow_zero: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = int(str(v))
        except ValueError:
            raise LaunchError(f"{name}={v!r}: must be an integer") from None
    if v < 0 or (v == 0 and not allow_zero):
        raise LaunchError(f"{name}={v!r}: must be {'>= 0' if allow_zero else '>= 1'}")
    return v


@dataclass
class SlurmOptions:
    """Resources of each SLURM job (see the module docstring)."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: dict = field(default_factory=dict)
    setup: list = field(default_factory=list)
    max_requeue: int = 3

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "launcher") -> "SlurmOptions":
        d = dict(d or {})
        unknown = sorted(set(d) - set(_OPTION_KEYS))
        if unknown:
            raise LaunchError(f"{where}: unknown keys {unknown}; known: {list(_OPTION_KEYS)}")
        return cls().updated(**d)

    def updated(self, **given) -> "SlurmOptions":
        """A copy with the given (non-None) values; values are validated and normalised."""
        new = SlurmOptions(**{**asdict(self), "sbatch": dict(self.sbatch), "setup": list(self.setup)})
        for key, v in given.items():
            if v is None or (key in ("sbatch", "setup") and not v):
                continue
            if key == "time":
                new.time_min = parse_time(v)
            elif key in ("gpus_per_task", "max_requeue"):
                setattr(new, key, _positive_int(key, v, allow_zero=True))
            elif key in ("cpus_per_task", "array_parallelism"):
                setattr(new, key, _positive_int(key, v))
            elif key == "mem":
                new.mem = parse_mem(v)
            elif key == "sbatch":
                extra = parse_sbatch_args(v) if isinstance(v, (list, tuple)) else v
                if not isinstance(extra, dict):
                    raise LaunchError(f"sbatch={v!r}: give a mapping of sbatch options (constraint: volta32gb) "
                                      f"or a list of NAME=VALUE")
                for k in extra:
                    if str(k).replace("_", "-") in _RESERVED_SBATCH:
                        raise LaunchError(f"sbatch option {k!r} is set by the launcher; use --nodes, "
                                          f"--tasks-per-node, --gpus-per-task or --time instead")
                new.sbatch.update({str(k): val for k, val in extra.items()})
            elif key == "setup":
                lines = [v] if isinstance(v, str) else list(v)
                new.setup.extend(str(line) for line in lines)
            elif key in ("partition", "account", "qos"):
                setattr(new, key, str(v))
            else:
                raise LaunchError(f"unknown SLURM option {key!r}; known: {list(_OPTION_KEYS)}")
        return new

    def executor_parameters(self, *, job_name: str, nodes: int = 1, tasks_per_node: int = 1,
                            gpus_per_node: int | None = None) -> dict[str, Any]:
        """Parameters for ``submitit.SlurmExecutor.update_parameters``."""
        gpus = self.gpus_per_task * tasks_per_node if gpus_per_node is None else gpus_per_node
        params: dict[str, Any] = {"job_name": job_name, "time": self.time_min, "nodes": nodes,
                                  "ntasks_per_node": tasks_per_node}
        if gpus:
            params["gpus_per_node"] = gpus
        for key in ("partition", "cpus_per_task", "mem", "account", "qos", "array_parallelism"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        if self.setup:
            params["setup"] = list(self.setup)
        return params

    def describe(self, gpus_per_node: int | None = None, tasks_per_node: int = 1) -> str:
        gpus = self.gpus_per_task * tasks_per_node if gpus_per_node is None else gpus_per_node
        parts = [f"partition {self.partition or '(default)'}", f"time {self.time_min} min", f"{gpus} GPU/node"]
        if self.cpus_per_task:
            parts.append(f"{self.cpus_per_task} CPU/task")
        if self.mem:
            parts.append(f"mem {self.mem}")
        return ", ".join(parts)


# --- the executor --------------------------------------------------------------------------------
def check_slurm() -> None:
    """Fail with one clear line where SLURM's commands are missing."""
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if missing:
        raise LaunchError(f"--launcher slurm: {', '.join(missing)} not on PATH; run this on a SLURM login node "
                          f"(or load its module), or use --launcher local")


def new_submission_folder(base: str | os.PathLike) -> Path:
    """A fresh folder per submission (``BASE/slurm/<time>-<token>``): after a purge SLURM reuses job
    ids, and submitit would hand back an old job's result from a reused folder."""
    folder = Path(base).resolve() / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def make_executor(folder: Path, options: SlurmOptions, **params):
    """A ``submitit.SlurmExecutor`` writing into ``folder``; ``params`` as
    :meth:`SlurmOptions.executor_parameters` takes them."""
    check_slurm()
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeue)
    try:
        ex.update_parameters(**options.executor_parameters(**params))
    except ValueError as e:  # submitit lists every parameter; the first line says what is wrong
        raise LaunchError(f"SLURM options: {str(e).splitlines()[0]}") from None
    return ex


@contextlib.contextmanager
def _job_context_hidden():
    """Hide the variables of the job (or torchrun) this command may run in, as submitit's
    ``clean_env`` does, but keep ``SLURM_CONF`` (which cluster) and ``SBATCH_*`` (the user's defaults)."""
    names = [k for k in os.environ
             if (k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")) and k != "SLURM_CONF")
             or k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")]
    hidden = {k: os.environ.pop(k) for k in names}
    try:
        yield
    finally:
        os.environ.update(hidden)


def submit(executor, fn) -> list:
    """Submit callables (one job, or a job array for several) and return submitit's jobs; an sbatch
    refusal becomes a one-line error."""
    import submitit

    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    try:
        # clean_env: submitted from inside a job (or torchrun), the job must not inherit its SLURM_* and
        # RANK/WORLD_SIZE variables; submitit echoes sbatch's refusal, which we report once below.
        with _job_context_hidden(), contextlib.redirect_stderr(io.StringIO()):
            if len(fns) == 1:
                return [executor.submit(fns[0])]
            with executor.batch():
                jobs = [executor.submit(f) for f in fns]
        return jobs
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError,
            submitit.core.utils.FailedSubmissionError) as e:
        out = getattr(e, "output", None) or getattr(e, "stderr", None) or str(e)
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        lines = [line for line in str(out).splitlines() if line.strip()]
        asked = ", ".join(f"{k}={v}" for k, v in sorted(executor.parameters.items())
                          if k in ("partition", "time", "nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task",
                                   "mem", "account", "qos", "additional_parameters"))
        hint = ""
        if "partition" in str(out).lower():
            names = _run(["sinfo", "-h", "-o", "%R"], 30)
            hint = f"; partitions here: {', '.join(sorted(set(names.split())))}" if names else ""
        raise LaunchError(f"sbatch refused the job ({asked}): {lines[-1] if lines else e}{hint}") from None


# --- job records ---------------------------------------------------------------------------------
@dataclass
class JobRecord:
    """Which SLURM job runs (or ran) something, and where its files are."""

    job_id: str
    folder: str
    name: str = ""
    tasks: int = 1
    submitted_at: str = ""
    recorded_failure: bool = False  # a dead job's failure was written down (once)

    FILE = "slurm_job.json"

    @classmethod
    def of(cls, job, name: str = "") -> "JobRecord":
        return cls(job_id=str(job.job_id), folder=str(job.paths.folder), name=name, tasks=job.num_tasks,
                   submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / self.FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "JobRecord | None":
        path = Path(directory) / cls.FILE
        try:
            d = json.loads(path.read_text())
            return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None

    def paths(self, task: int = 0):
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder, job_id=self.job_id, task_id=task)

    @property
    def stderr(self) -> Path:
        return self.paths().stderr

    @property
    def stdout(self) -> Path:
        return self.paths().stdout

    def outcome(self, task: int = 0) -> tuple[str, Any] | None:
        """("success", result) or ("error", traceback) from the job's result file; None if it wrote none."""
        from submitit.core.utils import pickle_load

        path = self.paths(task).result_pickle
        if not path.exists():
            return None
        try:
            return pickle_load(path)
        except Exception as e:  # noqa: BLE001 — a torn or foreign file is as good as none
            return ("error", f"unreadable result file {path}: {e}")

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the job's error log (its output log if that is empty)."""
        for path in (self.stderr, self.stdout):
            try:
                lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
            except OSError:
                continue
            if lines:
                return "\n".join(lines[-n:])
        return f"(no log in {self.folder})"


# --- job states ----------------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def _expand(job_id: str) -> list[str]:
    """sacct/squeue ids to ours: "12", "12_3", "12_[4-6,8%2]" -> ["12_4", "12_5", "12_6", "12_8"]."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        jid, sep, state = line.strip().partition("|")
        if not sep or "." in jid:
            continue
        for j in _expand(jid.strip()):
            states[j] = (state.split() or ["UNKNOWN"])[0].rstrip("+")
    return states


def job_states(job_ids: Iterable[str], timeout: float = 30) -> dict[str, str]:
    """The state of each job (``12`` or ``12_3``): squeue's while the job is in the queue (slurmctld's
    live view; sacct learns of a start or an end from slurmdbd later, so it can still say PENDING
    while the job runs), else sacct's final state, else GONE (over: the queue answered without it),
    else UNKNOWN (neither command answered)."""
    ids = sorted(set(map(str, job_ids)))
    if not ids:
        return {}
    queued = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], timeout)
    live = _parse(queued) if queued is not None else {}
    states = {j: live[j] for j in ids if j in live}
    gone = [j for j in ids if j not in states]
    if gone:
        mains = sorted({j.split("_")[0] for j in gone})
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(mains)], timeout)
        recorded = _parse(out) if out is not None else {}
        for j in gone:
            state = recorded.get(j)
            if queued is not None and (state is None or is_active(state)):
                state = GONE  # out of the queue, so over, whatever accounting has not caught up on yet
            states[j] = state or "UNKNOWN"
    return {j: states[j] for j in ids}


def is_active(state: str) -> bool:
    return state in ACTIVE_STATES


def wait_for(job_ids: Iterable[str], on_change: Callable[[str, str], None] | None = None,
             max_poll_s: float = 5.0, blind_limit_s: float = 300.0) -> dict[str, str]:
    """Poll until every job is over; ``on_change(job_id, state)`` on each new state. Gives up (one
    clear error) when no state could be read for ``blind_limit_s``."""
    ids = sorted(set(map(str, job_ids)))
    seen: dict[str, str] = {}
    poll, blind_since = 0.5, None
    while True:
        states = job_states(ids)
        if all(s == "UNKNOWN" for s in states.values()):
            blind_since = blind_since or time.monotonic()
            if time.monotonic() - blind_since > blind_limit_s:
                raise LaunchError(f"could not read the state of jobs {', '.join(ids)} for {blind_limit_s:.0f}s "
                                  f"(sacct and squeue fail); they may still run: check with squeue")
        else:
            blind_since = None
        for j, s in states.items():
            if seen.get(j) != s:
                seen[j] = s
                if on_change:
                    on_change(j, s)
        if not any(is_active(s) for s in states.values()):
            return states
        time.sleep(poll)
        poll = min(max_poll_s, poll * 1.5)
