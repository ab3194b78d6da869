"""The configs ship inside the wheel and work from an installed copy."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_carries_every_config_and_composes_outside_the_clone(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("synctalk-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = {n for n in names if n.startswith("synctalk/conf/") and n.endswith(".yaml")}
        z.extractall(tmp_path / "site")
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "synctalk").rglob("__init__.py")}
    assert packages <= names, f"packages missing from the wheel: {sorted(packages - names)}"
    assert "synctalk/stabilizer/canonical_face_68.txt" in names
    expected = {f"synctalk/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == expected
    code = ("from synctalk.config import config_dir; from hydra import compose, initialize_config_dir\n"
            "d = config_dir(); print(d)\n"
            "with initialize_config_dir(str(d), version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['experiment=smoke', 'paths.root_dir=.'])\n"
            "print(cfg.encoding.num_levels)\n"
            "from synctalk.stabilizer.face_model import CANONICAL_FACE, read_template\n"
            "assert read_template(CANONICAL_FACE).shape == (68, 3)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    conf_path, levels = out.stdout.split()
    assert Path(conf_path).resolve() == (tmp_path / "site" / "synctalk" / "conf").resolve()
    assert levels == "4"
