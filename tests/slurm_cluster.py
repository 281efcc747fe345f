"""A real one-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for the tests, with
every file it writes (config, spool, state, logs, PID files, munge key, MariaDB data dir) under one
directory.

    python tests/slurm_cluster.py up DIR       # install what is missing (root + apt), start, wait
    python tests/slurm_cluster.py down DIR     # cancel jobs, stop every daemon by its PID file
    SLURM_CONF=DIR/slurm.conf sinfo            # talk to it

There is no systemd here: each daemon is started by hand and stopped through its PID file. The
cgroup plugins are not used (proctrack/linuxproc, task/none), so nothing is left in /sys. Accounting
is real (slurmdbd + MariaDB on a private socket) because submitit and our sweep read job states with
``sacct``. Every step has a timeout; a failed start tears down what did start and raises
:class:`ClusterUnavailable` with the reason and the tail of the daemon's log.

The daemons listen on free ports picked at start; clients reach them through 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server")
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct",
            "squeue", "scontrol", "srun", "scancel")
# Daemons in start order; stopped in reverse.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
MARKER = "REVTRANSFER_TEST_SLURM"  # in the environment of our daemons (and so of their slurmstepd)
SBIN = ("/usr/sbin", "/sbin")


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be brought up here; the message says why."""


@dataclass
class Cluster:
    root: str
    conf: str
    node: str
    partition: str = "debug"
    cpus: int = 1

    def env(self) -> dict[str, str]:
        """Environment for clients (sbatch, squeue, sacct, submitit) of this cluster."""
        return {**os.environ, "SLURM_CONF": self.conf}


# --- helpers -------------------------------------------------------------------------------------
def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait(predicate, timeout: float, what: str, log: Path | None = None, step: float = 0.1,
          alive=None):
    """Poll ``predicate`` until true; fail at the deadline, or at once when ``alive()`` says the daemon
    we wait for has died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise ClusterUnavailable(f"{what}: the daemon died" + (f"; {log}:\n{_tail(log)}" if log else ""))
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 — keep polling until the deadline
            pass
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"timed out after {timeout:.0f}s waiting for {what}"
                                     + (f"; {log}:\n{_tail(log)}" if log else ""))
        time.sleep(step)


def _run(cmd, timeout: float, env=None, check=True, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    except subprocess.TimeoutExpired as e:
        raise ClusterUnavailable(f"{' '.join(map(str, cmd))} took over {timeout:.0f}s") from e
    if check and p.returncode:
        raise ClusterUnavailable(f"{' '.join(map(str, cmd))} failed ({p.returncode}): "
                                 f"{(p.stderr or p.stdout).strip()[-1500:]}")
    return p


# --- install -------------------------------------------------------------------------------------
def ensure_installed(timeout: float = 300) -> None:
    """Install the Debian packages that are missing (root with apt-get only)."""
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and we are not root to "
                                 f"apt-get install it")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    t0 = time.monotonic()
    p = _run(cmd, timeout, env, check=False)
    if p.returncode:  # stale or missing package lists: update once and retry
        _run(["apt-get", "update", "-q"], max(30.0, timeout - (time.monotonic() - t0)), env)
        _run(cmd, max(30.0, timeout - (time.monotonic() - t0)), env)
    if missing_binaries():
        raise ClusterUnavailable(f"apt-get installed the packages but {missing_binaries()} are still missing")


# --- configuration -------------------------------------------------------------------------------
def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory MB) as slurmd sees this machine."""
    out = _run([_which("slurmd"), "-C"], 30).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return int(fields.get("CPUs", os.cpu_count() or 1)), int(fields.get("RealMemory", 1000))


def write_config(root: Path) -> Cluster:
    d = {name: root / name for name in ("munge", "mysql", "ctld", "spool", "log", "run")}
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    # munged wants every folder above its socket world-executable and its key private.
    for p in [root, *d.values()]:
        p.chmod(0o755)
    key = d["munge"] / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    cpus, mem = _node_resources()
    ctld_port, slurmd_port, dbd_port = _free_port(), _free_port(), _free_port()
    munge_socket = d["munge"] / "munge.socket.2"
    # A fresh first job id per cluster: a purged state restarts ids at 1, and a reused submitit folder
    # would then hand back an old job's result.
    first_job_id = int(time.time()) % 1_000_000 * 10 + 1000
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=rtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={d['ctld']}
SlurmdSpoolDir={d['spool']}
SlurmctldPidFile={d['run'] / 'slurmctld.pid'}
SlurmdPidFile={d['run'] / 'slurmd.pid'}
SlurmctldLogFile={d['log'] / 'slurmctld.log'}
SlurmdLogFile={d['log'] / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_socket}
JobCompType=jobcomp/none
FirstJobId={first_job_id}
MinJobAge=600
KillWait=1
UnkillableStepTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MessageTimeout=10
PlugStackConfig={root / 'plugstack.conf'}
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    (root / "plugstack.conf").write_text("")
    dbd = root / "slurmdbd.conf"
    dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost={node}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={d['run'] / 'slurmdbd.pid'}
LogFile={d['log'] / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
""")
    dbd.chmod(0o600)
    cluster = Cluster(root=str(root), conf=str(conf), node=node, cpus=cpus)
    (root / "cluster.json").write_text(json.dumps(asdict(cluster)))
    return cluster


# --- start / stop --------------------------------------------------------------------------------
def _pid(root: Path, daemon: str) -> int | None:
    try:
        return int((root / "run" / f"{daemon}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _daemon_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_"))}
    env.update(SLURM_CONF=str(root / "slurm.conf"), MYSQL_UNIX_PORT=str(root / "mysql" / "mysqld.sock"),
               **{MARKER: str(root)})
    return env


def _spawn(root: Path, name: str, cmd: list[str], timeout: float = 20) -> None:
    """Start a daemon that forks into the background and writes its PID file."""
    log = root / "log" / f"{name}.stdout"
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=_daemon_env(root), start_new_session=True)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass  # a daemon that stays in the foreground writes its own PID file
    if p.returncode:
        raise ClusterUnavailable(f"{name} exited with {p.returncode}: {_tail(log)}\n"
                                 f"{_tail(root / 'log' / (name + '.log'))}")
    _wait(lambda: _alive(_pid(root, name)), timeout, f"{name} to write its PID file", root / "log" / f"{name}.log")


def start(root: str | os.PathLike, timeout: float = 60, install_timeout: float = 300) -> Cluster:
    """Install if needed, configure under ``root`` and start the cluster; wait until the node is idle."""
    if sys.platform != "linux":
        raise ClusterUnavailable(f"the test cluster needs Linux, not {sys.platform}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster runs its daemons as root; this is not root")
    ensure_installed(install_timeout)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    left = lambda: max(5.0, timeout - (time.monotonic() - t0))  # noqa: E731
    try:
        cluster = write_config(root)
        env = _daemon_env(root)
        log, run = root / "log", root / "run"
        msock = root / "munge" / "munge.socket.2"
        _spawn(root, "munged", [_which("munged"), "--force", f"--socket={msock}",
                                f"--key-file={root / 'munge' / 'munge.key'}", f"--pid-file={run / 'munged.pid'}",
                                f"--log-file={log / 'munged.log'}", f"--seed-file={root / 'munge' / 'munged.seed'}",
                                "--num-threads=2"], left())
        _wait(msock.exists, left(), "the munge socket", log / "munged.log")

        datadir, dbsock = root / "mysql" / "data", root / "mysql" / "mysqld.sock"
        if not (datadir / "mysql").exists():
            _run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}", "--user=root",
                  "--auth-root-authentication-method=socket", "--skip-test-db"], left(), env)
        mysqld = subprocess.Popen(
            [_which("mariadbd"), "--no-defaults", f"--datadir={datadir}", f"--socket={dbsock}",
             f"--pid-file={run / 'mariadbd.pid'}", f"--log-error={log / 'mariadbd.log'}", "--skip-networking",
             "--user=root", "--innodb-buffer-pool-size=16M", "--performance-schema=OFF",
             "--innodb-log-file-size=8M", "--innodb-lock-wait-timeout=900",
             "--max-connections=40"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        _wait(lambda: dbsock.exists() and _alive(_pid(root, "mariadbd")), left(), "MariaDB",
              log / "mariadbd.log", alive=lambda: mysqld.poll() is None)

        _spawn(root, "slurmdbd", [_which("slurmdbd")], left())
        port = int(next(line.split("=")[1] for line in (root / "slurmdbd.conf").read_text().splitlines()
                        if line.startswith("DbdPort=")))
        _wait(lambda: socket.create_connection(("127.0.0.1", port), 0.5).close() is None, left(), "slurmdbd",
              log / "slurmdbd.log", alive=lambda: _alive(_pid(root, "slurmdbd")))
        _spawn(root, "slurmctld", [_which("slurmctld"), "-f", cluster.conf], left())
        _wait(lambda: _run(["scontrol", "ping"], 10, env, check=False).stdout.count("UP") >= 1, left(),
              "slurmctld", log / "slurmctld.log", alive=lambda: _alive(_pid(root, "slurmctld")))
        _spawn(root, "slurmd", [_which("slurmd"), "-f", cluster.conf, "-N", cluster.node], left())

        def node_idle():
            out = _run(["sinfo", "-h", "-N", "-o", "%T"], 10, env, check=False).stdout.split()
            return out and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in out)

        _wait(node_idle, left(), "the node to become idle", log / "slurmd.log", step=0.2,
              alive=lambda: _alive(_pid(root, "slurmd")))
        _wait(lambda: _run(["sacct", "-X", "-n", "-S", "now-1hours"], 10, env).returncode == 0, left(),
              "sacct", log / "slurmdbd.log")
        return cluster
    except BaseException:
        stop(root)
        raise


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _our_stray_processes(root: Path) -> list[int]:
    """Processes of this cluster still alive after its daemons stopped: slurmstepd (MARKER=root in its
    environment) and its jobs' processes (SLURM_JOB_ID and SLURM_CONF=root/slurm.conf in theirs);
    never this process or its parents, nor a shell that merely exported SLURM_CONF."""
    marker, conf = f"{MARKER}={root}".encode(), f"SLURM_CONF={root / 'slurm.conf'}".encode()
    pids = []
    mine = _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        variables = set(env.split(b"\0"))
        if marker in variables or (conf in variables and any(v.startswith(b"SLURM_JOB_ID=") for v in variables)):
            pids.append(int(entry.name))
    return pids


def _terminate(pids: list[int], timeout: float) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def stop(root: str | os.PathLike, timeout: float = 20) -> None:
    """Cancel every job and stop every daemon of the cluster under ``root`` by its PID file. Safe to
    call on a half-started or already stopped cluster."""
    root = Path(root).resolve()
    env = _daemon_env(root)
    if _alive(_pid(root, "slurmctld")):
        try:
            subprocess.run(["scancel", "--full", "-u", "root"], env=env, timeout=10, capture_output=True)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, timeout=10, capture_output=True, text=True)
                if q.returncode or not q.stdout.strip():
                    break
                time.sleep(0.3)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for daemon in reversed(DAEMONS):
        pid = _pid(root, daemon)
        if _alive(pid):
            _terminate([pid], timeout / 2)
        (root / "run" / f"{daemon}.pid").unlink(missing_ok=True)
    strays = _our_stray_processes(root)
    if strays:
        _terminate(strays, 5)


def claim(parent: str | os.PathLike) -> Path:
    """A fresh directory for a cluster under ``parent``, owned by this process (``owner.pid``); the
    clusters of owners that died without tearing down (a killed test session) are stopped first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o755)
    for old in parent.iterdir():
        try:
            owner = int((old / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(owner):
            continue
        if owner is None and time.time() - old.stat().st_mtime < 600:
            continue  # being set up right now
        stop(old)
        shutil.rmtree(old, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="c-", dir=parent))
    (root / "owner.pid").write_text(str(os.getpid()))
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("up", "down"))
    ap.add_argument("root", help="directory for all of the cluster's files")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args(argv)
    if args.action == "down":
        stop(args.root)
        print(f"stopped the cluster in {args.root}")
        return 0
    t0 = time.monotonic()
    try:
        cluster = start(args.root, args.timeout)
    except ClusterUnavailable as e:
        print(f"SLURM unavailable: {e}", file=sys.stderr)
        return 1
    print(f"cluster up in {time.monotonic() - t0:.1f}s; export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
