"""Thread counts chosen from the usable cores and the other processes' load (synctalk.threads)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import torch

from synctalk import threads
from synctalk.threads import CpuLoad, ThreadGovernor, governed, threads_for, usable_cores
from tests.conftest import benchmark_module, latest_run


def test_free_cores_rounded_to_the_nearest_and_at_least_one():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.4) == 2  # a neighbour filling idle moments does not cost a thread
    assert threads_for(2, 0.6) == 1
    assert threads_for(2, 1.9) == 1
    assert threads_for(2, 5.0) == 1
    assert threads_for(8, 3.2) == 5
    assert threads_for(1, 0.0) == 1


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    tmp_path.mkdir(parents=True)
    proc = tmp_path / "proc_cgroup"
    root = tmp_path / "cgroup"
    if v2 is not None:
        proc.write_text("0::/job/step\n")
        (root / "job" / "step").mkdir(parents=True)
        (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
        (root / "job" / "cpu.max").write_text(v2)
    else:
        proc.write_text("4:memory:/x\n1:cpu,cpuacct:/docker/abc\n")
        (root / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
        (root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text(v1[0])
        (root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text(v1[1])
    return root, proc


def test_cgroup_cpu_quota_v1_and_v2(tmp_path):
    assert threads._cgroup_quota(*_cgroup(tmp_path / "a", v2="150000 100000\n")) == 1.5  # a parent's quota counts
    assert threads._cgroup_quota(*_cgroup(tmp_path / "b", v2="max 100000\n")) is None
    assert threads._cgroup_quota(*_cgroup(tmp_path / "c", v1=("300000", "100000"))) == 3.0
    assert threads._cgroup_quota(*_cgroup(tmp_path / "d", v1=("-1", "100000"))) is None
    assert threads._cgroup_quota(tmp_path / "none", tmp_path / "missing") is None


def test_usable_cores_take_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 6.0)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cores()[0] == 6
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    cores, limits = usable_cores()
    assert cores == 4 and limits == {"affinity": 8, "cgroup_quota": 6.0, "slurm": 4, "joblib_jobs": None}
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.3)  # under one core: still one thread
    assert usable_cores()[0] == 1


def _fake_proc(root, busy_ticks: tuple[int, int], own_ticks: int):
    (root / "self").mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(
        f"cpu  1 1 1 1 1 1 1 1 0 0\n"
        f"cpu0 {busy_ticks[0]} 0 0 500 0 0 0 0 0 0\n"
        f"cpu1 {busy_ticks[1]} 0 0 500 0 0 0 0 0 0\n"
        f"cpu9 100000 0 0 0 0 0 0 0 0 0\nintr 5\n")
    fields = ["S"] + ["0"] * 10 + [str(own_ticks), "0"] + ["0"] * 30
    (root / "self" / "stat").write_text("123 (python3 (x)) " + " ".join(fields) + "\n")


def test_other_processes_load_excludes_this_process_and_foreign_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    _fake_proc(tmp_path, (0, 0), 0)
    load = CpuLoad(tmp_path)
    ticks = 1 / load.tick_s
    # over 2 s: 3 CPU-seconds busy on cpu0 + cpu1, 1 of them this process's; cpu9 is not ours
    _fake_proc(tmp_path, (int(2 * ticks), int(1 * ticks)), int(1 * ticks))
    assert load.others() == pytest.approx(1.0)


def test_governor_changes_threads_only_in_its_own_thread(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: (4, {}))
    loads = iter([0.0, 2.6, 2.6, 0.0, 0.0, 0.0])
    monkeypatch.setattr(CpuLoad, "others", lambda self: next(loads))
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(interval_s=0.0)
        assert governor.start(watch_s=0) == 4 and torch.get_num_threads() == 4
        other = threading.Thread(target=governor.tick)  # another thread's tick changes nothing
        other.start()
        other.join()
        assert governor.threads == 4
        governor.tick()  # others busy on 2.6 of 4 cores: down at once
        assert governor.threads == 1 and torch.get_num_threads() == 1
        governor.tick()
        governor.tick()  # free again: up only when two decisions in a row ask for it
        assert governor.threads == 1
        governor.tick()
        assert governor.threads == 4 and torch.get_num_threads() == 4
        summary = governor.summary()
        assert summary["first"] == 4 and summary["last"] == 4 and summary["mode"] == "adaptive"
        assert [c[1] for c in summary["changes"]] == [1, 4]
    finally:
        torch.set_num_threads(before)


def test_a_probe_takes_back_a_core_that_a_lower_priority_job_only_borrowed(monkeypatch):
    """Below the usable cores the governor tries one more thread now and then; it keeps it when the others'
    load measured meanwhile leaves the core free, and goes back (waiting longer next time) when it does not."""
    monkeypatch.setattr(threads, "usable_cores", lambda: (2, {}))
    # start: a neighbour on 1 core; at 2 threads it vanishes (same session, lower priority); later a neighbour
    # that keeps its core whatever this job does
    loads = iter([1.0, 1.0, 0.1, 0.1, 1.2, 1.2, 1.1])
    monkeypatch.setattr(CpuLoad, "others", lambda self: next(loads))
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(interval_s=0.0, probe_s=0.0, first_probe_wait_s=0.0)
        assert governor.start(watch_s=0) == 1
        governor.tick()  # settled at 1 below 2 cores: probe with 2
        assert governor.threads == 2 and torch.get_num_threads() == 2 and governor.probes == [1, 0]
        governor.tick()  # the neighbour left the core free: kept
        assert governor.threads == 2 and governor.probes == [1, 1]
        governor.tick()
        governor.tick()  # a neighbour that takes its core: down at once
        assert governor.threads == 1
        governor.tick()  # probe ...
        assert governor.threads == 2 and governor.probes == [2, 1]
        governor.tick()  # ... the core stays busy: back to 1
        assert governor.threads == 1 and torch.get_num_threads() == 1 and governor.probes == [2, 1]
        summary = governor.summary()
        assert summary["probes_tried"] == 2 and summary["probes_kept"] == 1
        assert [c[1] for c in summary["changes"]] == [2, 1]  # the failed probe is not a change
    finally:
        torch.set_num_threads(before)


def test_governor_gives_way_to_busy_processes_and_takes_the_cores_back():
    """Real processes: busy loops in another session on every usable core, then none."""
    cores = usable_cores()[0]
    if cores < 2:
        pytest.skip("needs 2 usable cores to show a change")
    before = torch.get_num_threads()
    governor = ThreadGovernor(interval_s=0.3)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(cores)]
    try:
        time.sleep(0.5)
        governor.start(watch_s=0.5)
        for _ in range(20):
            time.sleep(0.1)
            governor.tick()
        assert governor.threads == 1 and torch.get_num_threads() == 1
    finally:
        for p in busy:
            p.kill()
            p.wait()
    try:
        for _ in range(30):
            time.sleep(0.1)
            governor.tick()
        assert governor.threads == cores and torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_governed_restores_the_count_and_rejects_zero():
    before = torch.get_num_threads()
    with governed(1) as governor:
        assert torch.get_num_threads() == 1 and threads.current() is governor
        assert governor.summary()["mode"] == "fixed"
    assert torch.get_num_threads() == before and threads.current() is None
    from synctalk.errors import UserError

    with pytest.raises(UserError, match="threads=0"):
        with governed(0):
            pass


def test_a_run_records_its_threads(run_cli, capsys):
    smoke = ("experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "render_video=false",
             "trainer.max_steps=4", "metrics.landmarks=false", "metrics.lip_sync=false", "metrics.brisque=false",
             "metrics.audio_response=false")
    assert run_cli("train", *smoke, "threads=1") == 0
    run = latest_run(run_cli.root)
    info = json.loads((run / "run_info.json").read_text())
    assert info["torch_threads"] == 1 and info["threads_configured"] == 1 and info["usable_cores"] >= 1
    recorded = json.loads((run / "metrics.json").read_text())["threads"]
    assert recorded["mode"] == "fixed" and recorded["first"] == recorded["last"] == 1
    assert run_cli("train", *smoke) == 0
    recorded = json.loads((latest_run(run_cli.root) / "metrics.json").read_text())["threads"]
    assert recorded["mode"] == "adaptive" and 1 <= recorded["first"] <= recorded["usable_cores"]
    assert run_cli("train", *smoke, "threads=0") == 2
    assert "threads=0: give a number of threads of at least 1" in capsys.readouterr().err


def test_shared_machine_benchmark_reads_thread_counts_and_tabulates(tmp_path):
    """benchmarks/shared_machine.py: the thread counts a run logged, and times relative to the same setting alone."""
    bench = benchmark_module("shared_machine")
    log = tmp_path / "run.log"
    log.write_text("[t][synctalk.threads][INFO] threads: 1 of 2 usable cores (other processes busy on 0.9)\n"
                   "[t][synctalk.threads][INFO] threads: 1 -> 2 (a probe found the core free)\n"
                   "[t][synctalk.threads][INFO] threads: 2 -> 1 (other processes busy on 1.0 of 2 cores)\n")
    assert bench.threads_used(log) == "1->2"
    (tmp_path / "empty.log").write_text("nothing\n")
    assert bench.threads_used(tmp_path / "empty.log") == "default"
    cells = [{"workload": "train", "neighbour": n, "setting": s, "seconds": t, "stopped": stopped, "threads": ["1"]}
             for n, s, t, stopped in (("alone", "baseline", 40.0, False), ("alone", "auto", 38.0, False),
                                      ("copy", "baseline", 200.0, True), ("copy", "auto", 57.0, False))]
    table = bench.table(cells).splitlines()
    assert table[2].startswith("| train | alone | 40 (1.00x)")
    assert table[3] == "| train | copy | >200 (>5.00x), 1 | 57 (1.50x), 1 |"
