"""Every config composes, every group option composes and instantiates, typos are errors."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from synctalk.config import config_dir, validate
from synctalk.config.schema import (EvaluateConfig, PreprocessConfig, RenderConfig, ReportConfig, TrainConfig)
from synctalk.errors import UserError
from synctalk.face.face_model import FaceModelSpec
from synctalk.face.landmark_detectors import LandmarkDetector
from tests.conftest import compose_config

JOBS = {"train": TrainConfig, "demo": TrainConfig, "evaluate": EvaluateConfig, "render": RenderConfig,
        "report": ReportConfig, "preprocess": PreprocessConfig}
GROUPS = sorted(p.name for p in config_dir().iterdir()
                if p.is_dir() and p.name not in ("hydra", "local", "experiment", "debug"))
PREPROCESS_ONLY = ("face_model", "landmark_detector")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_config_composes_and_validates(job, tmp_path):
    cfg = compose_config(job, root=tmp_path)
    validate(cfg, JOBS[job])


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "stage" and option in ("lips", "torso"):
        overrides.append("stage.init_from=/some/head.ckpt")
    if group == "data" and option == "subject":
        overrides.append("data.root=/some/dataset")
    job = "preprocess" if group in PREPROCESS_ONLY else "train"
    cfg = compose_config(job, overrides, root=tmp_path)
    validate(cfg, JOBS[job])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], root=tmp_path)
    validate(cfg, TrainConfig)


def test_groups_instantiate(tmp_path):
    cfg = compose_config("train", ["experiment=smoke"], root=tmp_path)
    net = instantiate(cfg.model.net)
    assert net.encoding.output_dim == 3 * cfg.encoding.num_levels * cfg.encoding.features_per_level
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    for logger in options("logger"):
        c = compose_config("train", [f"logger={logger}"], root=tmp_path)
        if "_target_" in c.logger and "Wandb" not in c.logger._target_:
            assert instantiate(c.logger) is not None
    optimizer = instantiate(cfg.model.optimizer)(net.parameters())
    assert optimizer.defaults["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("group,base", [("face_model", FaceModelSpec), ("landmark_detector", LandmarkDetector)])
def test_component_groups_instantiate_one_class_per_file(group, base, tmp_path):
    """A face model or a landmark detector is a class plus a YAML file naming it: each option builds its own."""
    classes = set()
    for option in options(group):
        component = instantiate(compose_config("preprocess", [f"{group}={option}"], root=tmp_path)[group])
        assert isinstance(component, base) and type(component) is not base, option
        classes.add(type(component))
    assert len(classes) == len(options(group)) >= 2


def test_an_unknown_component_or_a_moved_key_is_a_one_line_error(run_cli, capsys):
    assert run_cli("preprocess", "data.video=x.mp4", "face_model=flame") == 2
    assert "face_model/flame" in capsys.readouterr().err
    assert run_cli("preprocess", "data.video=x.mp4", "preprocess.face_model.backend=bfm") == 2
    assert "preprocess.face_model.backend was renamed: write face_model=bfm" in capsys.readouterr().err


def test_tracker_presets_hold_their_focal_grids(tmp_path):
    grids = {o: compose_config("train", [f"tracker={o}"], root=tmp_path).tracker.focal for o in options("tracker")}
    assert (grids["synctalk"].start, grids["synctalk"].stop, grids["synctalk"].step) == (500, 1450, 50)
    assert (grids["ernerf"].start, grids["ernerf"].stop, grids["ernerf"].step) == (600, 1400, 100)
    assert (grids["fine50"].start, grids["fine50"].stop, grids["fine50"].step) == (600, 1500, 50)


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    cfg = compose_config("train", root=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.trainer_typo = 1
    with pytest.raises(UserError, match="trainer_typo"):
        validate(cfg, TrainConfig)
    cfg = compose_config("train", root=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.data.rays_per_stepp = 5
    with pytest.raises(UserError, match="rays_per_stepp"):
        validate(cfg, TrainConfig)
    cfg = compose_config("train", root=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.data.synthetic.num_frame = 5
    with pytest.raises(UserError, match="num_frame"):
        validate(cfg, TrainConfig)


def test_wrong_value_type_is_an_error(tmp_path):
    cfg = compose_config("train", ["data.rays_per_step=many"], root=tmp_path)
    with pytest.raises(UserError, match="rays_per_step"):
        validate(cfg, TrainConfig)


def test_blendshape_set_sizes_feed_the_model(tmp_path):
    sizes = {o: compose_config("train", [f"blendshapes={o}"], root=tmp_path).model.net.eye_dim for o in options("blendshapes")}
    assert sizes == {"au45": 1, "eye2": 2, "single4": 4, "upper7": 7}


@pytest.mark.parametrize("key,value", [("tracker.pose_source", "flow"), ("tracker.focal_landmarks", "lips"),
                                       ("flow.backend", "raft"),
                                       ("preprocess.points.region", "hair"), ("preprocess.points.rule", "random"),
                                       ("preprocess.bundle_adjustment.robust", "cauchy"), ("preprocess.crop.mode", "wide"),
                                       ("preprocess.parsing.backend", "sam")])
def test_a_choice_that_is_not_an_option_fails_when_the_config_is_composed(key, value, tmp_path):
    """Choices are enums in the schema: a bad one is a one-line error naming the key and the options, before any
    work starts (the algorithms do not check their choices again)."""
    cfg = compose_config("preprocess", [f"{key}={value}"], root=tmp_path)
    with pytest.raises(UserError, match=rf"config error at '{key}': Invalid value '{value}', expected one of"):
        validate(cfg, PreprocessConfig)
