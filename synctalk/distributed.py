"""Multi-process training (``trainer=ddp``); the thread count of each process is :mod:`synctalk.threads`.

``trainer=ddp`` with ``trainer.devices=N``: the ``synctalk train`` process is rank 0 and starts ranks 1..N-1
itself, as ``python -m synctalk train <this job's overrides> hydra.run.dir=<this run folder>``, with the
torch.distributed variables set (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``,
``LOCAL_RANK``). Lightning then finds its processes already created and joins them (gloo on CPUs, NCCL on
GPUs). Every rank draws the rays of its own frame each step; rank 0 alone writes the run folder (run info,
checkpoints, logs, media, evaluation, ``metrics.json``); the other ranks log to ``train_rank<k>.log`` in the
same folder. The same command works inside a multirun job: each job trains its own group of processes.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from synctalk.errors import UserError

log = logging.getLogger(__name__)


def global_rank() -> int:
    """This process's rank in a multi-process run (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def wants_ddp(cfg: DictConfig) -> int:
    """The number of processes ``cfg.trainer`` asks for (1 without a DDP strategy)."""
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    devices = cfg.trainer.get("devices", 1)
    if "ddp" not in name.lower():
        return 1
    if not isinstance(devices, int) or devices < 1:
        raise UserError(f"trainer.devices={devices}: trainer=ddp needs a number of processes, e.g. trainer.devices=2")
    return devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ddp_ranks(cfg: DictConfig, job: str = "train") -> Iterator[None]:
    """In rank 0 of a DDP run: start ranks 1..N-1 for the body, then wait for them (stop them when the body
    failed; an error when one of them failed), and restore the environment, so the next job of a sweep that
    runs in this process starts its own ranks. In ranks 1..N-1 it only leaves the process group when the body ends;
    without trainer=ddp it does nothing."""
    world = wants_ddp(cfg)
    if world <= 1:
        yield
        return
    if "LOCAL_RANK" in os.environ:  # ranks 1..N-1: leave the group before the interpreter exits
        try:
            yield
        finally:
            _leave_group()
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    out = Path(cfg.paths.output_dir)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world), "NODE_RANK": "0"}
    saved = {k: os.environ.get(k) for k in (*env, "LOCAL_RANK", "RANK")}
    procs = []
    for rank in range(1, world):
        command = [sys.executable, "-m", "synctalk", job, *HydraConfig.get().overrides.task, f"hydra.run.dir={out}",
                   "hydra.output_subdir=null", f"hydra.job.name={job}_rank{rank}"]
        with open(out / f"rank{rank}.stderr", "w") as stderr:
            procs.append(subprocess.Popen(command, cwd=get_original_cwd(), stdout=subprocess.DEVNULL, stderr=stderr,
                                          env={**os.environ, **env, "LOCAL_RANK": str(rank), "RANK": str(rank)}))
    os.environ.update(env, LOCAL_RANK="0", RANK="0")
    log.info("trainer=ddp: %d processes (ranks 1..%d started; their logs: %s/%s_rank*.log)", world, world - 1, out, job)
    failed = True
    try:
        yield
        failed = False
    finally:
        _leave_group()  # the next job of a sweep makes its own group
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _join(procs, failed)


def _leave_group() -> None:
    """Destroy this process's process group, if any. Every rank does it before it exits: a group left to the
    interpreter's exit can be torn down while its communication threads still run, and the process then aborts
    ("terminate called without an active exception", exit code -6) after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _join(procs: list[subprocess.Popen], failed: bool, timeout_s: float = 600) -> None:
    """Wait for ranks 1..N-1 (kill them first when rank 0 failed); an error when one of them failed."""
    for rank, p in enumerate(procs, start=1):
        if failed:
            p.kill()
        try:
            code = p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait()
        if code != 0 and not failed:
            raise UserError(f"a training process (rank {rank}) failed with exit code {code}: "
                            f"see rank{rank}.stderr in the run folder")
