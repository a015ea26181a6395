"""A real 2-node SLURM cluster on this machine, for tests/test_launch.py.

Debian's slurmctld / slurmd / slurm-client / munge (installed with apt-get when missing) are
started from a private temporary directory: our own munged (key, socket), one slurmctld and two
slurmd daemons (``slurmd -N n1``, ``slurmd -N n2``; Debian's build has MULTIPLE_SLURMD), both
at NodeAddr=127.0.0.1 on their own ports. Nothing under /etc is touched; clients find the
cluster through ``SLURM_CONF`` (``cluster.env``). ``stop()`` ends exactly the daemons that
``start()`` started.

No accounting storage is configured, so job states come from ``scontrol show job`` (MinJobAge
keeps finished jobs visible for an hour).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
_BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "munged")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class SlurmUnavailable(Exception):
    """SLURM cannot be installed here (no apt-get): a reason to skip, not a failure."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )


def ensure_installed(timeout: float = 600) -> None:
    """Install the Debian packages if any binary is missing. SlurmUnavailable without apt-get;
    RuntimeError (with apt's output) when apt-get exists but the install fails."""
    if all(_which(b) for b in _BINARIES):
        return
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailable("SLURM is not installed and apt-get is unavailable to install it")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and _which("sudo") is None:
        raise SlurmUnavailable("SLURM is not installed and apt-get needs root (no sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in ([*prefix, apt, "update", "-q"], [*prefix, apt, "install", "-y", "-q", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        log.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        if proc.returncode != 0:
            raise RuntimeError("installing SLURM with apt-get failed:\n" + "\n".join(log))
    missing = [b for b in _BINARIES if not _which(b)]
    if missing:
        raise RuntimeError(f"apt-get installed {PACKAGES} but {missing} are missing:\n" + "\n".join(log))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    """``with SlurmCluster() as c:`` or ``c.start()`` / ``c.stop()``."""

    def __init__(
        self, nodes: tuple[str, ...] = ("n1", "n2"), cpus_per_node: int = 2, partition: str = "test"
    ):
        self.nodes = nodes
        self.cpus = cpus_per_node
        self.partition = partition
        # A short path: munge's socket path must fit in sun_path (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="vd-slurm-"))
        self.dir.chmod(0o755)  # munged wants its socket's directory searchable by all
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge.sock"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":  # never inherit an outer job's settings
                del self.env[var]

    # ------------------------------------------------------------------ set-up

    def _write_config(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(exist_ok=True)
        for n in self.nodes:
            (d / "spool" / n).mkdir(exist_ok=True)
        mem = 1024
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} RealMemory={mem} State=UNKNOWN"
            for n, p in zip(self.nodes, node_ports)
        )
        self.conf.write_text(
            f"""# Written by tests/slurm_cluster.py: a 2-node cluster on one machine (MULTIPLE_SLURMD).
ClusterName=vitdist
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only cred_expire (default 120) s later: keep it short.
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=20
InactiveLimit=0
KillWait=15
MinJobAge=3600
TmpFS={d}
{node_lines}
PartitionName={self.partition} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        )
        (self.dir / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.stdout", "w")  # noqa: SIM115 (kept open while it runs)
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def start(self, timeout: float = 90) -> SlurmCluster:
        ensure_installed()
        self._write_config()
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.dir}/munged.pid",
                f"--seed-file={self.dir}/munged.seed",
                f"--log-file={self.dir}/log/munged.log",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), 20, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run(["scontrol", "ping"], check=False).returncode == 0, 30, "slurmctld ping")
        for n in self.nodes:
            self._spawn(f"slurmd-{n}", [_which("slurmd"), "-D", "-N", n, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "both nodes idle in sinfo")
        return self

    def _all_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in self.nodes)

    def _wait(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) waiting for {what}\n{self.logs()}")
            if cond():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")

    # ------------------------------------------------------------------ use

    def _run(
        self, cmd: list[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        cmd = [_which(cmd[0]) or cmd[0], *cmd[1:]]
        proc = subprocess.run(
            cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, args: list[str], cwd: Path, env: dict | None = None) -> int:
        out = self._run(["sbatch", "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})}).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, RestartCnt, ExitCode, StdOut, ...)."""
        proc = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        info = {}
        for field in proc.stdout.split():
            k, sep, v = field.partition("=")
            if sep and k not in info:
                info[k] = v
        return info

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self._run(["scontrol", *args])

    def scancel(self, *args: str) -> subprocess.CompletedProcess:
        return self._run(["scancel", *args])

    def wait_job(self, job_id: int, until, timeout: float, poll: float = 1.0) -> dict[str, str]:
        """Poll until ``until(info)`` is true; on timeout RuntimeError with the job's and daemons' logs."""
        end = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < end:
            info = self.job(job_id)
            if info and until(info):
                return info
            time.sleep(poll)
        raise RuntimeError(f"job {job_id} timed out after {timeout} s in state {info}\n{self.job_logs(info)}")

    def job_logs(self, info: dict[str, str]) -> str:
        out = ""
        for key in ("StdOut", "StdErr"):
            path = Path(info.get(key, "") or "/nonexistent")
            if path.is_file():
                out += f"===== job {key} {path}\n{path.read_text(errors='replace')[-6000:]}\n"
        return out + self.logs()

    def logs(self, tail: int = 3000) -> str:
        out = ""
        for path in sorted((self.dir / "log").glob("*")):
            if path.suffix == ".stdout" and path.with_suffix(".log").exists():
                continue  # the daemon's own log file has the same lines
            text = path.read_text(errors="replace")
            if text.strip():
                out += f"===== {path.name}\n{text[-tail:]}\n"
        return out

    # ------------------------------------------------------------------ tear-down

    def stop(self) -> None:
        """Stop every daemon this object started (slurmds, then slurmctld, then munged)."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            # Jobs first, so that no slurmstepd (a child of our slurmd) outlives the cluster.
            self._run(["scancel", f"--partition={self.partition}"], check=False)
            end = time.monotonic() + 30
            while time.monotonic() < end and self._run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        order = [n for n in self.procs if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
        self.procs.clear()
        if not os.environ.get("VIT_DIST_KEEP_SLURM_DIR"):  # keep it to read the daemons' logs
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
