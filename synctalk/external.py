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


#: a folder of weight files searched by ``auto`` settings (e.g. ``preprocess.face_landmarker=auto``)
WEIGHTS_ENV = "SYNCTALK_WEIGHTS"


def weight_search_dirs(root_dir: str | Path | None = None) -> list[Path]:
    """Where ``auto`` looks for a weight file, in order: ``$SYNCTALK_WEIGHTS``, ``<paths.root_dir>/weights``,
    ``~/.cache/synctalk``."""
    import os

    dirs = [Path(os.environ[WEIGHTS_ENV]).expanduser()] if os.environ.get(WEIGHTS_ENV) else []
    if root_dir is not None:
        dirs.append(Path(root_dir) / "weights")
    return dirs + [Path.home() / ".cache" / "synctalk"]


def find_weight(configured: str | None, file_name: str, what: str, config_key: str,
                root_dir: str | Path | None = None) -> Path | None:
    """A weight file that is optional: ``auto`` finds ``file_name`` in :func:`weight_search_dirs` (None when it
    is in none of them); None or an empty setting means not used; any other value is a path that must exist."""
    if not configured:
        return None
    if configured == "auto":
        return next((d / file_name for d in weight_search_dirs(root_dir) if (d / file_name).is_file()), None)
    return require_file(configured, what, config_key)


def load_weights(model, path: str | None, what: str, config_key: str, kind: str, rename=None):
    """Load a user-supplied state-dict file into ``model`` (all keys must match) and return the model.

    Args:
        what: a human name of the file, for the missing-file error; kind: what the file must be
            ("an AVE checkpoint"), for the mismatch error.
        rename: maps the file's key names to the model's (e.g. adds or removes a prefix).
    """
    import torch

    file = require_file(path, what, config_key)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise UserError(f"cannot read {file} as a torch checkpoint: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{file} does not hold a state dict")
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # matching names with other shapes
        raise UserError(f"{file} is not {kind}: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(f"{file} is not {kind}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return model


def report() -> dict[str, bool]:
    """Availability of every optional package, for run metadata and ``synctalk --help``."""
    return {name: is_available(name) for name in INSTALL_HINTS}
