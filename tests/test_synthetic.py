"""The synthetic subject: complete layout, deterministic, and its ground truth is consistent."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np

from synctalk.audio.features import SAMPLE_RATE
from synctalk.data.layout import DatasetLayout, Transforms
from synctalk.face.segmentation import PARSING_COLORS
from synctalk.geometry import project_points
from synctalk.synthetic.subject import SyntheticSpec, generate


def digest(root, names):
    h = hashlib.sha1()
    for n in names:
        h.update((root / n).read_bytes())
    return h.hexdigest()


def test_layout_is_complete(tiny_dataset):
    layout = DatasetLayout(tiny_dataset)
    layout.check_ready()
    n = 24
    for i in range(n):
        for path in (layout.frame(i), layout.landmarks(i), layout.parsing(i), layout.face_only_mask(i),
                     layout.head_mask(i), layout.gt_image(i), layout.torso_image(i)):
            assert path.is_file(), path
    assert np.load(layout.blendshapes).shape == (n, 52)
    assert np.load(layout.audio_features("mel")).shape == (n, 16, 80)
    train, val = Transforms.read(layout.transforms("train")), Transforms.read(layout.transforms("val"))
    assert len(train.img_ids) + len(val.img_ids) == n and val.img_ids[0] == train.img_ids[-1] + 1
    assert len(train.img_ids) == int(n * 10 / 11)
    torso = cv2.imread(str(layout.torso_image(0)), cv2.IMREAD_UNCHANGED)
    assert torso.shape == (64, 64, 4)
    # the true neutral shape, for face_model=template: the 3D landmarks with no blink, brow or mouth
    from synctalk.synthetic.subject import landmarks_3d
    from synctalk.face.face_model import read_template

    np.testing.assert_allclose(read_template(tiny_dataset / "face_template.npy"), landmarks_3d(0.0, 0.0, 0.0))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = SyntheticSpec(num_frames=6, size=32)
    a = generate(spec, tmp_path / "a", progress=False)
    b = generate(spec, tmp_path / "b", progress=False)
    c = generate(SyntheticSpec(num_frames=6, size=32, seed=1), tmp_path / "c", progress=False)
    names = ["ori_imgs/3.jpg", "bs.npy", "aud.wav", "transforms_train.json"]
    assert digest(a, names) == digest(b, names)
    assert digest(a, names) != digest(c, names)


def test_generation_is_cached_by_spec(tmp_path):
    spec = SyntheticSpec(num_frames=4, size=32)
    root = generate(spec, tmp_path / "s", progress=False)
    stamp = (root / "ori_imgs" / "0.jpg").stat().st_mtime_ns
    generate(spec, root, progress=False)
    assert (root / "ori_imgs" / "0.jpg").stat().st_mtime_ns == stamp
    generate(SyntheticSpec(num_frames=5, size=32), root, progress=False)
    assert (root / "ori_imgs" / "4.jpg").is_file()  # a different spec regenerates


def test_ground_truth_poses_reproject_the_landmarks(tiny_dataset):
    gt = np.load(tiny_dataset / "ground_truth.npz")
    train = Transforms.read(tiny_dataset / "transforms_train.json")
    assert train.focal == gt["focal"] == SyntheticSpec(**{"size": 64}).focal
    ids = train.img_ids
    uv = project_points(gt["landmarks_3d"][ids], train.c2w.astype(np.float64), train.focal, train.cx, train.cy)
    lms = np.stack([np.loadtxt(tiny_dataset / "ori_imgs" / f"{i}.lms") for i in ids])
    np.testing.assert_allclose(uv, lms, atol=1e-3)


def test_landmarks_lie_on_the_head_mask(tiny_dataset):
    for i in (0, 10, 20):
        mask = cv2.imread(str(tiny_dataset / "face_mask" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
        lms = np.loadtxt(tiny_dataset / "ori_imgs" / f"{i}.lms")
        inside = mask[lms[:, 1].astype(int).clip(0, 63), lms[:, 0].astype(int).clip(0, 63)] > 0
        assert inside.mean() > 0.95


def test_parsing_uses_only_the_four_colours(tiny_dataset):
    img = cv2.imread(str(tiny_dataset / "parsing" / "5.png"))[..., ::-1].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(img, axis=0)}
    assert colours <= set(PARSING_COLORS.values())
    assert {PARSING_COLORS["head"], PARSING_COLORS["background"]} <= colours


def test_blinks_close_the_eye_landmarks_and_mouth_follows_audio(tmp_path):
    root = generate(SyntheticSpec(num_frames=100, size=64), tmp_path / "s", progress=False)
    gt = np.load(root / "ground_truth.npz")
    lms3d = gt["landmarks_3d"]
    eye_open = np.abs(lms3d[:, 37, 1] - lms3d[:, 41, 1])
    peaks = gt["blink_peaks"]
    assert len(peaks) >= 2
    assert eye_open[peaks].max() < 0.2 * np.median(eye_open)
    bs = np.load(root / "bs.npy")
    assert np.allclose(bs[:, 9], gt["blink"]) and np.allclose(bs[:, 10], gt["blink"])
    from synctalk.audio.features import load_audio
    audio = load_audio(root / "aud.wav")
    assert abs(len(audio) - 100 / 25 * SAMPLE_RATE) <= 1
    hop = SAMPLE_RATE // 25
    rms = np.array([np.sqrt(np.mean(audio[i * hop:(i + 1) * hop] ** 2)) for i in range(100)])
    assert np.corrcoef(rms, gt["mouth"])[0, 1] > 0.7
    mouth_gap = lms3d[:, 62, 1] - lms3d[:, 66, 1]
    assert np.corrcoef(mouth_gap, gt["mouth"])[0, 1] > 0.99
    spec = json.loads((root / "synthetic_spec.json").read_text())
    assert spec["num_frames"] == 100


def test_the_face_edge_lies_on_the_head_except_at_the_jaw():
    """As on a real head, the face's edge at the temples and cheeks is not the head's outline (a face detector
    reads the face oval as a line inside it), while the jaw is the outline against the neck."""
    from synctalk.synthetic.subject import HEAD_HEIGHT, LABEL_HEAD, landmarks_3d, render_frame
    from synctalk.geometry import head_pose_to_c2w

    size, focal, distance = 256, 675.0, SyntheticSpec().distance
    rotation, translation = np.eye(3), np.array([0.0, HEAD_HEIGHT, -distance])
    frame = render_frame(size, focal, distance, rotation, translation, 0.0, 0.0, 0.0, antialias=1)
    c2w = head_pose_to_c2w(rotation[None], translation[None])
    u, v = project_points(landmarks_3d(0.0, 0.0, 0.0)[None], c2w, focal, size / 2, size / 2)[0].T
    outward = np.sign(u - size / 2)
    for k in (0, 1, 2, 14, 15, 16):  # temples and cheeks: head 3 px outside the face's edge
        assert frame["labels"][int(round(v[k])), int(round(u[k] + 3 * outward[k]))] == LABEL_HEAD, k
    assert frame["labels"][int(round(v[8])) + 3, int(round(u[8]))] != LABEL_HEAD  # below the chin: the neck
