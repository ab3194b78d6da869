"""Atomic file output (JSON, figures, any file or folder): a reader never sees a half-written file or folder
as complete."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Works for files and folders. On error the temporary output is removed and any
    existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (indented, numpy scalars converted)."""
    def default(o):
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=default) + "\n")


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the non-interactive backend: (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 80) -> None:
    """Write a matplotlib figure atomically (the format follows the suffix) and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


class StepCache:
    """Results of the steps of one long computation, kept on disk so that a killed run resumes after its last
    finished step.

    ``key`` identifies the computation (its inputs and settings): a folder written under another key is
    cleared (None: nothing is kept, every step is computed). Each step's result is pickled atomically to
    ``<folder>/<name>.pkl``; call :meth:`clear` when the whole computation has finished.
    """

    def __init__(self, folder: str | os.PathLike, key: str | None):
        self.folder, self.key = Path(folder), key
        stamp = self.folder / "key.txt"
        if key is None:
            self.clear()
        elif not stamp.is_file() or stamp.read_text() != key:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            stamp.write_text(key)

    def __call__(self, name: str, compute):
        """The result of ``compute()``, from disk when this step already finished under the same key."""
        import logging
        import pickle

        if self.key is None:
            return compute()
        path = self.folder / f"{name}.pkl"
        if path.is_file():
            logging.getLogger(__name__).info("step %s: resumed from %s", name, path)
            return pickle.loads(path.read_bytes())
        result = compute()
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(result))
        return result

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
