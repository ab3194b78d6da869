"""The built wheel is complete: installed into a fresh environment, it preprocesses a video and trains."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path) -> Path:
    """``pip wheel .`` of a copy of the working tree (no stale build/ folder can leak into it)."""
    src = tmp_path / "src"
    anywhere = shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".pytest_cache")

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = {".venv", "build", "dist", "outputs", "data", "multirun"} if Path(folder) == REPO else set()
        return set(anywhere(folder, names)) | (top & set(names))

    shutil.copytree(REPO, src, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    return next((tmp_path / "dist").glob("synctalk-*.whl"))


def fresh_environment(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed; its dependencies are read from this environment's
    site-packages (added as a path, so the editable install of the clone is not active there)."""
    env = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300)
    return env


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_environment_preprocesses_and_trains(tmp_path):
    from synctalk.synthetic.subject import SyntheticSpec, generate
    from tests.conftest import make_video

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "synctalk").rglob("__init__.py")}
    assert packages <= names, f"packages missing from the wheel: {sorted(packages - names)}"
    assert "synctalk/face/canonical_face_68.txt" in names and "synctalk/face/canonical_face.obj" in names
    shipped = {n for n in names if n.startswith("synctalk/conf/") and n.endswith(".yaml")}
    assert shipped == {f"synctalk/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    modules = {n for n in names if n.startswith("synctalk/") and n.endswith(".py")}
    assert modules == {p.relative_to(REPO).as_posix() for p in (REPO / "synctalk").rglob("*.py")}

    env = fresh_environment(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    run_env = {**os.environ, "SYNCTALK_ROOT": str(work), "WANDB_MODE": "offline", "TQDM_DISABLE": "1",
               "PYTHONPATH": ""}
    where = subprocess.run([str(env / "bin" / "python"), "-c", "import synctalk, synctalk.config as c; "
                            "print(synctalk.__file__); print(c.config_dir())"],
                           cwd=work, env=run_env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).resolve().is_relative_to(env.resolve()) for p in where), where  # the installed copy

    subject = generate(SyntheticSpec(num_frames=30, size=128, seed=5), tmp_path / "s", progress=False)
    video = make_video(subject, tmp_path / "clip.mp4", fps=25)
    synctalk = str(env / "bin" / "synctalk")
    pre = subprocess.run([synctalk, "preprocess", f"data.video={video}", f"data.root={work / 'clip'}",
                          "tracker.steps=200", "tracker.check_halves=false", "tracker.pose_source=landmarks",
                          "tracker.focal_source=landmarks"],
                         cwd=work, env=run_env, capture_output=True, text=True, timeout=900)
    assert pre.returncode == 0, pre.stdout[-2000:] + pre.stderr[-3000:]
    assert (work / "clip" / "transforms_train.json").is_file() and (work / "clip" / "crop.json").is_file()
    train = subprocess.run([synctalk, "train", "experiment=smoke", "data=subject", f"data.root={work / 'clip'}",
                            "logger=none", "trainer.enable_progress_bar=false"],
                           cwd=work, env=run_env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert list((work / "outputs" / "train" / "runs").glob("*/checkpoints/last.ckpt"))
    metrics = json.loads(next((work / "outputs" / "train" / "runs").glob("*/metrics.json")).read_text())
    assert metrics["encoding_lookup"] == "fused_cpu"  # the kernel's source ships in the wheel and builds there


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``synctalk`` modules it imports (module level or inside a function)."""
    import ast

    modules = {}
    for path in (REPO / "synctalk").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles_of(graph: dict[str, set[str]]) -> list[str]:
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    return sorted(name for name in graph if name in reachable(name))


def test_no_import_cycles_between_modules():
    """Every ``synctalk`` import forms an acyclic graph of modules."""
    cycles = cycles_of(import_graph())
    assert cycles == [], f"modules that import themselves through others: {cycles}"


def test_packages_import_one_way():
    """The packages of ``synctalk`` (face, synthetic, data, stabilizer, stages, ...) import each other one way:
    the graph of packages, each module counted in its package, has no cycle."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        graph.setdefault(package(module), set()).update(package(d) for d in deps if package(d) != package(module))
    cycles = cycles_of(graph)
    assert cycles == [], f"packages that import themselves through others: {cycles}"


def test_no_module_name_is_repeated():
    """A module's name says which one it is: no two modules (or a module and a package) share a name."""
    from collections import Counter

    names = Counter(p.stem for p in (REPO / "synctalk").rglob("*.py") if p.stem != "__init__")
    names.update(p.name for p in (REPO / "synctalk").rglob("*") if (p / "__init__.py").is_file())
    repeated = sorted(name for name, count in names.items() if count > 1)
    assert repeated == [], f"module names used more than once: {repeated}"
