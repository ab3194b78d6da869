"""The stage machinery of preprocessing: a :class:`Stage` declares what it reads and writes, and
:class:`StageRunner` runs it once.

A finished stage leaves a marker ``<root>/.stages/<name>.json`` holding

- ``key``: the stage's settings, the source video's identity (its size and content hash, for stages that read
  it) and the fingerprints of the outputs of the stages it reads (``needs``);
- ``outputs``: the fingerprint of its own outputs (file count, bytes, newest modification time per pattern);
- ``report``: what it measured.

A stage is skipped only when its key is unchanged **and** its outputs still have the recorded fingerprint,
so a stage whose output was truncated, deleted or rewritten after it finished is redone, and every stage
that read it is redone after it. Stages write their outputs atomically, so a killed stage leaves nothing
that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from synctalk import threads
from synctalk.data.layout import DatasetLayout
from synctalk.io import write_json

log = logging.getLogger(__name__)


def fingerprint(root: Path, patterns: tuple[str, ...]) -> dict:
    """{pattern: [files, bytes, newest mtime in ns]} of the files under ``root`` that match each glob pattern
    ([0, 0, 0] when none match)."""
    out = {}
    for pattern in patterns:
        count = size = newest = 0
        for path in root.glob(pattern):
            if path.is_file():
                st = path.stat()
                count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
        out[pattern] = [count, size, newest]
    return out


@dataclass
class StageContext:
    """What every stage may read: the source video, the dataset folder and the preprocessing-wide settings."""

    video: Path
    root: Path
    fps: float = 25.0
    progress: bool = True
    run_key: str = ""  # set by the runner: a hash of the running stage's key (for stages that resume inside)
    _source_state: tuple | None = field(default=None, repr=False)
    _source_hash: str = field(default="", repr=False)

    @property
    def layout(self) -> DatasetLayout:
        return DatasetLayout(self.root)

    def frame_count(self) -> int:
        """Frames written by the ``frames`` stage."""
        return sum(1 for _ in (self.root / "ori_imgs").glob("*.jpg"))

    def frame_paths(self) -> list[Path]:
        return [self.layout.frame(i) for i in range(self.frame_count())]

    def source_identity(self) -> dict:
        """The source video's size and content hash: the same recording copied, moved or touched keeps its cached
        stages; another recording at the same path does not. Hashed once per file state (under a second per GB)."""
        st = self.video.stat()
        state = (str(self.video.resolve()), st.st_size, st.st_mtime_ns)
        if self._source_state != state:
            digest = hashlib.sha256()
            with open(self.video, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._source_state, self._source_hash = state, digest.hexdigest()
        return {"size": st.st_size, "sha256": self._source_hash}


@dataclass
class Stage:
    """One preprocessing step. Subclasses are dataclasses whose fields are the stage's settings.

    Class attributes:
        name: the marker name and the name ``preprocess.force`` takes.
        needs: stages whose outputs this stage reads.
        reads_source: whether it reads the source video (its identity is then part of the key).
        outputs: glob patterns, relative to the dataset folder, of every file the stage writes; each must
            match at least one file after the stage ran.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    reads_source: ClassVar[bool] = False
    outputs: ClassVar[tuple[str, ...]] = ()

    def settings(self) -> dict:
        """The settings that change the outputs (every dataclass field)."""
        return asdict(self)

    def run(self, ctx: StageContext) -> dict:
        """Write the outputs; return the stage report (JSON-serialisable)."""
        raise NotImplementedError


class StageRunner:
    """Runs stages in order, skipping the finished ones (see the module docstring); ``force`` redoes the
    named ones. Temporary folders a killed run left behind (``.<name>.<random>.partial``) are removed."""

    def __init__(self, ctx: StageContext, force: list[str] | None = None):
        self.ctx = ctx
        self.force = set(force or [])
        self.markers = ctx.root / ".stages"
        self.markers.mkdir(parents=True, exist_ok=True)
        for partial in sorted(ctx.root.rglob(".*.partial"), reverse=True):  # left by a killed run's atomic writes
            shutil.rmtree(partial, ignore_errors=True)

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.json"

    def key(self, stage: Stage) -> dict:
        """What the stage's outputs depend on."""
        key = {"settings": stage.settings(), "fps": self.ctx.fps, "inputs": {}}
        if stage.reads_source:
            key["source"] = self.ctx.source_identity()
        for need in stage.needs:
            marker = self.marker(need)
            key["inputs"][need] = json.loads(marker.read_text())["outputs"] if marker.is_file() else None
        return json.loads(json.dumps(key))  # as it reads back from the marker (tuples become lists)

    @staticmethod
    def key_hash(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def status(self, stage: Stage) -> str:
        """``done``, or why the stage has to run."""
        marker = self.marker(stage.name)
        if stage.name in self.force:
            return "forced"
        if not marker.is_file():
            return "not run yet"
        recorded = json.loads(marker.read_text())
        if recorded.get("key") != self.key(stage):
            return "settings or inputs changed"
        now = fingerprint(self.ctx.root, stage.outputs)
        if now != recorded.get("outputs"):
            changed = [p for p in stage.outputs if now[p] != recorded["outputs"].get(p)]
            return f"outputs changed after the stage finished ({', '.join(changed)})"
        return "done"

    def run(self, stage: Stage) -> dict:
        """Run ``stage`` unless it is done; returns its report."""
        status = self.status(stage)
        marker = self.marker(stage.name)
        if status == "done":
            log.info("stage %s: cached", stage.name)
            return json.loads(marker.read_text())["report"]
        if status.startswith("outputs changed"):
            log.warning("stage %s: %s: redoing it", stage.name, status)
        key = self.key(stage)
        marker.unlink(missing_ok=True)  # a stage being redone is not done, whatever happens next
        start = time.perf_counter()
        self.ctx.run_key = self.key_hash(key)
        governor = threads.current()
        before = (governor.threads, len(governor.changes)) if governor else None
        report = stage.run(self.ctx)
        report["elapsed_s"] = round(time.perf_counter() - start, 2)
        if governor is not None:  # the thread counts it ran with ([seconds since the job began, threads, others' cores])
            report["threads"] = {"at_start": before[0], "at_end": governor.threads,
                                 "changes": governor.changes[before[1]:]}
        outputs = fingerprint(self.ctx.root, stage.outputs)
        missing = [p for p, (count, _, _) in outputs.items() if count == 0]
        if missing:
            raise RuntimeError(f"stage {stage.name} finished without writing {', '.join(missing)}")
        write_json(marker, {"key": key, "outputs": outputs, "report": report})
        log.info("stage %s: %s", stage.name, report)
        return report
