"""The stabilizer's plots: error against focal, pose curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.io import save_figure, subplots
from synctalk.stabilizer.pose_convention import rotation_angles_deg


def plot_focal(search, path: Path) -> None:
    fig, ax = subplots(figsize=(6, 3.2))
    ax.plot(search.candidates, search.rms_px, "o-", label="grid")
    if len(search.refined):
        ax.plot(search.refined, search.refined_rms_px, ".", label="refinement")
    ax.axvline(search.focal, color="k", lw=0.8, ls="--", label=f"chosen {search.focal:.0f}")
    ax.set_xlabel("focal length (px)")
    ax.set_ylabel("landmark RMS error (px)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_poses(curves: dict, fps: float, path: Path) -> None:
    fig, ax = subplots(2, 3, figsize=(12, 5), sharex=True)
    for name, (rot, trans) in curves.items():
        t = np.arange(len(rot)) / fps
        ang = rotation_angles_deg(rot)
        for k, label in enumerate(("pitch (deg)", "yaw (deg)", "roll (deg)")):
            ax[0, k].plot(t, ang[:, k], lw=0.9, label=name)
            ax[0, k].set_title(label, fontsize=9)
        for k, label in enumerate(("x (mm)", "y (mm)", "z (mm)")):
            ax[1, k].plot(t, trans[:, k] * 1000, lw=0.9, label=name)
            ax[1, k].set_title(label, fontsize=9)
    ax[0, 0].legend(fontsize=8)
    for a in ax[1]:
        a.set_xlabel("seconds")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
