"""The one place that knows which optional packages and weight files are available.

The default pipeline needs none of them. A component that can use an accelerated
backend calls :func:`require` when the user selected that backend explicitly, and gets
an error that says exactly how to install it.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from synctalk.errors import UserError

#: optional package -> how to install it (tinycudann, pytorch3d and cotracker are not on PyPI).
INSTALL_HINTS = {
    "tinycudann": (
        "pip install --no-build-isolation "
        "'git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch' "
        "(needs a CUDA toolkit matching torch.version.cuda and a GPU)"
    ),
    "pytorch3d": (
        "pip install --no-build-isolation 'git+https://github.com/facebookresearch/pytorch3d.git@stable' "
        "(needs a CUDA toolkit matching torch.version.cuda for the GPU kernels)"
    ),
    "cotracker": (
        "pip install 'git+https://github.com/facebookresearch/co-tracker.git' and download a checkpoint, "
        "e.g. scaled_offline.pth from https://huggingface.co/facebook/cotracker3, then set its path in the config"
    ),
    "transformers": "pip install 'transformers>=4.40' (or install this package with the [hubert] extra)",
}


def is_available(package: str) -> bool:
    """True when ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def require(package: str, purpose: str):
    """Import and return an optional package, or fail with its install instructions."""
    if not is_available(package):
        hint = INSTALL_HINTS.get(package, f"pip install {package}")
        raise UserError(f"{purpose} needs the optional package '{package}', which is not installed. Install it with: {hint}")
    return importlib.import_module(package)


def require_file(path: str | None, what: str, config_key: str) -> Path:
    """Check that a user-supplied weight or model file exists.

    Args:
        path: the configured path (may be empty).
        what: a human name of the file ("AVE audio encoder checkpoint").
        config_key: the config key that sets it, named in the error.
    """
    if not path:
        raise UserError(f"{what} is not configured: set {config_key}=/path/to/file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found at {p} (set {config_key}=/path/to/file)")
    return p


def report() -> dict[str, bool]:
    """Availability of every optional package, for run metadata and ``synctalk --help``."""
    return {name: is_available(name) for name in INSTALL_HINTS}
