"""LPIPS (AlexNet) with its backbone weights taken from a local file.

The ``lpips`` package ships its learned linear layers, but the AlexNet backbone comes
from torchvision's ImageNet weights, which it would download. Here the backbone is read
from ``alexnet-owt-7be5be79.pth`` (torchvision's file) at a configured path, or from the
torch hub cache where torchvision keeps it; nothing is downloaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from synctalk import external
from synctalk.errors import UserError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def default_backbone_path() -> Path:
    """Where torchvision caches the AlexNet ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def find_backbone(path: str | None) -> str | None:
    """The configured backbone file, else torchvision's cached copy, else None."""
    if path:
        return path
    cached = default_backbone_path()
    return str(cached) if cached.is_file() else None


def missing_backbone_message(config_key: str) -> str:
    """What to do when the AlexNet weights are not found."""
    return (f"LPIPS needs the AlexNet ImageNet weights: download {ALEXNET_URL} to {default_backbone_path()} "
            f"or set {config_key}=<path to {ALEXNET_FILE}>")


def load_lpips(backbone_path: str | None, config_key: str) -> torch.nn.Module:
    """An eval-mode, frozen LPIPS(AlexNet) module; inputs (B, 3, H, W) in [-1, 1].

    Raises a :class:`UserError` that says where to put the backbone file when it is missing.
    """
    import lpips
    import torchvision

    path = find_backbone(backbone_path)
    if path is None:
        raise UserError(missing_backbone_message(config_key))
    alexnet = external.load_weights(torchvision.models.alexnet(weights=None), path, "AlexNet weights", config_key,
                                    "torchvision AlexNet weights")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated 'pretrained' flag
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    for name, module in model.net.named_modules():
        if isinstance(module, torch.nn.Conv2d):  # lpips keeps torchvision's layer indices: slice<k>.<index>
            module.load_state_dict(alexnet.features[int(name.rsplit(".", 1)[1])].state_dict())
    return model.eval().requires_grad_(False)
