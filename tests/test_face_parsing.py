"""BiSeNet face parsing: checkpoint layout, loading, inference and the grouping into labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synctalk.errors import UserError
from synctalk.face.bisenet import CLASS_NAMES, BiSeNet, BiSeNetParser
from synctalk.face.segmentation import BACKGROUND, HEAD, NECK, TORSO, labels_from_classes


def test_parameter_names_and_shapes_match_the_released_checkpoint():
    state = BiSeNet().state_dict()
    expected = {  # names and shapes of the standard 19-class face-parsing checkpoint
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer1.1.bn2.running_var": (64,),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer4.1.conv2.weight": (512, 512, 3, 3),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.weight": (128,),
        "cp.conv_head16.conv.weight": (128, 128, 3, 3),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv.conv.weight": (64, 128, 3, 3),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    assert not [k for k in state if k.startswith("cp.resnet.fc")]
    assert len(CLASS_NAMES) == 19


def test_parser_loads_a_checkpoint_and_labels_every_pixel(tmp_path):
    torch.manual_seed(0)
    net = BiSeNet()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "parsing.pth")  # DataParallel
    parser = BiSeNetParser(tmp_path / "parsing.pth", size=128, device="cpu")
    bgr = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    classes = parser(bgr)
    assert classes.shape == (96, 80) and classes.dtype == np.uint8 and classes.max() < 19
    with torch.no_grad():  # same as running the network on the resized, normalised image
        import cv2
        rgb = cv2.resize(bgr[..., ::-1], (128, 128), interpolation=cv2.INTER_LINEAR)
        x = (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
             - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        direct = net.eval()(x)[0].argmax(0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(classes, cv2.resize(direct, (80, 96), interpolation=cv2.INTER_NEAREST))

    with pytest.raises(UserError, match="preprocess.parsing.bisenet_checkpoint"):
        BiSeNetParser(None)
    torch.save({"backbone.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a 19-class face-parsing BiSeNet"):
        BiSeNetParser(tmp_path / "other.pth")


def test_classes_group_into_the_original_labels_and_face_mask():
    classes = np.zeros((40, 40), np.uint8)
    classes[2:8, 8:32] = 17  # hair
    classes[8:24, 10:30] = 1  # skin
    classes[12:14, 6:10] = 7  # ear
    classes[18:20, 16:24] = 12  # lip
    classes[24:30, 16:24] = 14  # neck
    classes[30:, :] = 16  # cloth
    labels, face = labels_from_classes(classes, jaw_shift=3)
    assert labels[5, 20] == HEAD and labels[12, 7] == HEAD and labels[10, 20] == HEAD
    assert labels[26, 20] == NECK and labels[35, 5] == TORSO and labels[0, 0] == BACKGROUND
    assert not face[5, 20] and not face[12, 7]  # no hair, no ears in the face-only mask
    assert face[10, 20] and face[19, 20]
    # the chin is moved down 3 px in the middle half of the face width, not at its sides
    assert face[24:27, 20].all() and not face[27, 20]
    assert not face[24, 11]
