"""How many CPU threads torch (and OpenCV) use: chosen from the cores this process may use and from what
else is running, and changed while a job runs.

Why: torch splits each operation into one part per thread and waits for the last part (an OpenMP parallel
region). When another process takes a core, one of those threads waits for the scheduler while the others
wait for it, every region, hundreds of times a step. On a 2-core machine where a busy process runs in
another terminal session (Linux groups the processes of a session and shares the CPU fairly between the
groups, whatever their ``nice`` value), training with 2 threads ran more than 10 times slower than with 1
(``docs/performance.md``, "Sharing the machine"). So a job uses as many threads as there are cores that
nothing else is using.

- :func:`usable_cores`: the cores this process may use at all: its CPU affinity, a cgroup CPU quota
  (containers, systemd slices), ``SLURM_CPUS_PER_TASK`` and the share of a ``hydra/launcher=joblib`` job.
- :class:`CpuLoad`: the cores other processes keep busy, from ``/proc/stat`` (only the CPUs this process may
  run on, steal time included) less this process's own CPU time, between two readings.
- :class:`ThreadGovernor`: sets the thread count at start and re-decides every ``interval_s`` seconds at a
  :func:`tick` (called once per step, frame or iteration by the long loops); ``threads=N`` in a job's config
  fixes N instead. :meth:`ThreadGovernor.summary` is what run folders and stage reports record.

A count below the usable cores is also probed now and then: one more thread for ``probe_s`` seconds, kept when
the others' load measured meanwhile leaves that core free. A job of lower priority in the same session only
uses the cores this job leaves idle, so at 1 thread it looks like a neighbour taking a core and at 2 threads
it almost vanishes; the probe finds that out. Beside a neighbour that does take the core (another session,
the same priority) the probe fails and costs ``probe_s`` seconds; the next one waits twice as long (up to
``max_probe_wait_s``).

``torch.set_num_threads`` applies to the thread that calls it, so the changes are made in :func:`tick`,
which runs in the job's own thread.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytorch_lightning as pl

log = logging.getLogger(__name__)

_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(cgroup_root: Path = _CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup and its parents, in cores (None: no quota or unreadable)."""
    quotas = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = Path(path.lstrip("/"))
        if controllers == "":  # cgroup v2: cpu.max holds "<quota> <period>" or "max <period>"
            dirs = [cgroup_root / rel, *[cgroup_root / p for p in rel.parents]]
            for d in dirs:
                try:
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                if quota != "max" and float(period) > 0:
                    quotas.append(float(quota) / float(period))
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us is -1 without a quota
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                d = cgroup_root / name / rel
                try:
                    quota = float((d / "cpu.cfs_quota_us").read_text())
                    period = float((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
                break
    return min(quotas) if quotas else None


def _joblib_jobs() -> int | None:
    """The jobs a ``hydra/launcher=joblib`` sweep runs at once (None outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):  # not inside a Hydra job
        return None
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    jobs = launcher.get("n_jobs", -1)
    return (os.cpu_count() or 1) if jobs is None or jobs < 1 else int(jobs)


def usable_cores() -> tuple[int, dict]:
    """The number of cores this process may use (at least 1) and what limits it: ``{"affinity": n,
    "cgroup_quota": cores or None, "slurm": n or None, "joblib_jobs": n or None}``."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    slurm = int(slurm) if slurm and slurm.isdigit() else None
    jobs = _joblib_jobs()
    cores = affinity
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 0.5)))
    if slurm:
        cores = min(cores, slurm)
    if jobs:
        cores = min(cores, max(1, (os.cpu_count() or 1) // jobs))
    return max(1, cores), {"affinity": affinity, "cgroup_quota": quota, "slurm": slurm, "joblib_jobs": jobs}


class CpuLoad:
    """The cores that other processes keep busy, measured between consecutive :meth:`others` calls.

    ``/proc/stat``'s busy time (user, nice, system, irq, softirq, steal) of the CPUs in this process's affinity,
    less this process's own CPU time (``/proc/self/stat``, all its threads). Without ``/proc`` (not Linux)
    it reads 0.
    """

    def __init__(self, proc: Path = Path("/proc")):
        self.proc = proc
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.cpus = {f"cpu{c}" for c in cpus} if cpus else None
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """(wall s, busy CPU s of the affinity CPUs, this process's CPU s)"""
        try:
            busy = 0
            for line in (self.proc / "stat").read_text().splitlines():
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or (self.cpus is not None and name not in self.cpus):
                    continue
                v = [int(x) for x in values[:8]] + [0] * (8 - min(8, len(values)))
                busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
            own = (self.proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
            mine = int(own[11]) + int(own[12])  # utime, stime (fields 14 and 15)
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy * self.tick_s, mine * self.tick_s

    def others(self) -> float | None:
        """Cores kept busy by other processes since the previous call (None when unreadable or too soon)."""
        now = self._read()
        last, self.last = self.last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


def threads_for(cores: int, others: float) -> int:
    """The thread count for ``cores`` usable cores of which other processes keep ``others`` busy: the free
    cores, rounded to the nearest, at least 1."""
    return max(1, min(cores, math.floor(cores - others + 0.5)))


def _apply(threads: int) -> None:
    """Set torch's and OpenCV's thread counts for the calling thread (OpenCV's is process-wide)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass


@dataclass
class ThreadGovernor:
    """Chooses and changes the thread count of one job.

    ``configured``: a fixed count (``threads=N`` in the config), or None to choose. ``interval_s``: seconds
    between decisions. A drop is made at once (a shared core slows every step); a rise waits until two
    decisions in a row ask for it, so a neighbour that pauses for a moment does not make it flap.
    """

    configured: int | None = None
    interval_s: float = 2.0
    probe_s: float = 1.0  # how long one more thread is tried
    first_probe_wait_s: float = 10.0  # from settling below the usable cores to the first probe
    max_probe_wait_s: float = 160.0
    cores: int = 0
    limits: dict = field(default_factory=dict)
    threads: int = 0
    changes: list = field(default_factory=list)  # [seconds since start, threads, others' cores]
    _thread_seconds: dict = field(default_factory=dict)
    _load: CpuLoad | None = None
    _start: float = 0.0
    _last: float = 0.0
    _rise: int = 0
    _probe_wait: float = 0.0
    _next_probe: float = 0.0
    _probe_start: float | None = None  # set while a probe runs
    probes: list = field(default_factory=lambda: [0, 0])  # [tried, kept]
    _owner: int = 0  # the thread that started it: torch's count is per thread, so only it applies changes

    def start(self, watch_s: float = 0.2) -> int:
        """Choose the first count (after watching the other processes for ``watch_s`` seconds) and apply it."""
        self.cores, self.limits = usable_cores()
        self._owner = threading.get_ident()
        self._start = self._last = time.monotonic()
        if self.configured:
            self.threads = int(self.configured)
            _apply(self.threads)
            log.info("threads: %d (set by threads=%d)", self.threads, self.configured)
            return self.threads
        self._load = CpuLoad()
        self._probe_wait = self.first_probe_wait_s
        self._next_probe = self._start + self._probe_wait
        time.sleep(watch_s)
        others = self._load.others()
        self.threads = threads_for(self.cores, others or 0.0)
        self.changes.append([0.0, self.threads, None if others is None else round(others, 2)])
        _apply(self.threads)
        self._last = time.monotonic()
        log.info("threads: %d of %d usable cores (other processes busy on %.1f)", self.threads, self.cores,
                 others or 0.0)
        return self.threads

    def tick(self) -> None:
        """Call once per unit of work in the job's own thread: every ``interval_s`` seconds the count is
        decided again from the other processes' load since the last decision."""
        if self._load is None or threading.get_ident() != self._owner:
            return
        now = time.monotonic()
        if now - self._last < (self.probe_s if self._probe_start is not None else self.interval_s):
            return
        self._thread_seconds[self.threads] = self._thread_seconds.get(self.threads, 0.0) + now - self._last
        self._last = now
        others = self._load.others()
        if others is None:
            return
        wanted = threads_for(self.cores, others)
        if self._probe_start is not None:  # the probe's verdict: the others' load while it ran
            self._probe_start = None
            tried, base = self.threads, self.threads - 1
            if wanted >= tried:
                self.probes[1] += 1
                self._probe_wait = self.first_probe_wait_s
                self._change(base, tried, others, now, "a probe found the core free")
            else:
                self._probe_wait = min(2 * self._probe_wait, self.max_probe_wait_s)
                self._change(base, wanted, others, now, "the probe found the core busy")
            self._next_probe = now + self._probe_wait
            return
        if wanted > self.threads:
            self._rise += 1
            if self._rise < 2:
                return
        self._rise = 0
        if wanted != self.threads:
            self._change(self.threads, wanted, others, now, f"other processes busy on {others:.1f} of {self.cores} cores")
            self._next_probe = now + self._probe_wait
        elif self.threads < self.cores and now >= self._next_probe:  # try one more thread for probe_s seconds
            self.probes[0] += 1
            self._probe_start = now
            self.threads += 1
            _apply(self.threads)

    def _change(self, old: int, new: int, others: float, now: float, why: str) -> None:
        """Settle on ``new`` threads (``old``: the count before, a probe's base); a change is logged and kept."""
        if new != old:
            log.info("threads: %d -> %d (%s)", old, new, why)
            self.changes.append([round(now - self._start, 1), new, round(others, 2)])
        self.threads = new
        _apply(new)

    def summary(self) -> dict:
        """What was chosen, for a run's metadata: usable cores and their limits, the configured count, the
        first and last counts, every change, and the seconds spent at each count."""
        seconds = dict(self._thread_seconds)
        if self._start:
            seconds[self.threads] = seconds.get(self.threads, 0.0) + time.monotonic() - self._last
        return {"usable_cores": self.cores, "limits": self.limits, "configured": self.configured,
                "mode": "fixed" if self.configured else "adaptive",
                "first": self.changes[0][1] if self.changes else self.threads, "last": self.threads,
                "changes": self.changes[1:] if not self.configured else [],
                "probes_tried": self.probes[0], "probes_kept": self.probes[1],
                "seconds_at": {str(k): round(v, 1) for k, v in sorted(seconds.items())}}


_current: list[ThreadGovernor] = []


@contextmanager
def governed(configured: int | None) -> Iterator[ThreadGovernor]:
    """Run a job's body under a :class:`ThreadGovernor` (``configured``: ``threads=N``, or None to choose);
    the long loops' :func:`tick` calls reach it. Restores the previous thread count afterwards."""
    import torch

    if configured is not None and configured < 1:
        from synctalk.errors import UserError

        raise UserError(f"threads={configured}: give a number of threads of at least 1, or threads=null to "
                        "choose from the free cores")
    before = torch.get_num_threads()
    governor = ThreadGovernor(configured)
    governor.start()
    _current.append(governor)
    try:
        yield governor
    finally:
        _current.remove(governor)
        _apply(before)


def tick() -> None:
    """One unit of work done (a training step, a rendered frame, an optimiser iteration): lets the running
    job's governor re-decide its thread count. Does nothing outside :func:`governed`."""
    if _current:
        _current[-1].tick()


def current() -> ThreadGovernor | None:
    """The running job's governor (None outside :func:`governed`)."""
    return _current[-1] if _current else None


def record(into: dict) -> dict:
    """``into`` with the running job's :meth:`ThreadGovernor.summary` under ``threads`` (unchanged outside
    :func:`governed`), for the job's ``metrics.json`` or result."""
    if _current:
        into["threads"] = _current[-1].summary()
    return into


def current_threads() -> int:
    """The thread count a job should size its own worker pools by (the governor's, else the usable cores)."""
    return _current[-1].threads if _current else usable_cores()[0]


class TickEveryStep(pl.Callback):
    """A Lightning callback that calls :func:`tick` after every training and validation batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tick()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        tick()
