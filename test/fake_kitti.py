"""A small fake dataset in the official SemanticKITTI layout, for the train / eval / infer command tests.

``make_fake_semantickitti(root)`` writes sequences 00 (train split) and 08 (val split) with a few frames each:
textured left/right PNGs at the KITTI size, ``calib.txt`` (copied from the real sample when ../shared/data has
it, else the same sequence-08 values written out), ``poses.txt``, a velodyne scan sampled from the scene,
``voxels/NNNNNN.label`` (uint16 raw ids through learning_map_inv) + ``.invalid``, and a ``semantic-kitti.yaml``
generated from ``labels.SEMANTIC_KITTI`` (plus the official file's outlier / other-structure / other-object -> 0).
Each frame is a simple street: road, sidewalks, terrain, two building rows, a few cars, trees and poles, with the
far end and the layer under the ground marked invalid.

The ``fake_kitti`` fixture builds it once per test session (it is shared by several test modules).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
import yaml

from scanssc_ros.data.voxel_io import write_voxel_file
from scanssc_ros.labels import SEMANTIC_KITTI

IMAGE_HW = (370, 1226)
DATA_ROOT = Path(os.environ.get("SCANSSC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# official learning_map_inv: train id -> raw SemanticKITTI id
RAW_IDS = (0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81)
SEQ08_CALIB = """\
P0: 7.070912e+02 0.0 6.018873e+02 0.0 0.0 7.070912e+02 1.831104e+02 0.0 0.0 0.0 1.0 0.0
P1: 7.070912e+02 0.0 6.018873e+02 -3.798145e+02 0.0 7.070912e+02 1.831104e+02 0.0 0.0 0.0 1.0 0.0
P2: 7.070912e+02 0.0 6.018873e+02 4.688783e+01 0.0 7.070912e+02 1.831104e+02 1.178601e-01 0.0 0.0 1.0 6.203223e-03
P3: 7.070912e+02 0.0 6.018873e+02 -3.334597e+02 0.0 7.070912e+02 1.831104e+02 1.930130e+00 0.0 0.0 1.0 3.318498e-03
Tr: -1.857739e-03 -9.999660e-01 -8.039975e-03 -4.784030e-03 -6.481466e-03 8.051860e-03 -9.999466e-01 -7.337429e-02 \
9.999773e-01 -1.805529e-03 -6.496204e-03 -3.339968e-01
"""
C = {name: i for i, name in enumerate(SEMANTIC_KITTI.classes)}


# raw ids that the official learning_map sends to 0 ("unlabeled") although they are not raw 0
UNLABELED_RAW = {1: "outlier", 52: "other-structure", 99: "other-object"}


def label_yaml() -> Dict:
    inv = {i: raw for i, raw in enumerate(RAW_IDS)}
    lmap = {raw: i for i, raw in inv.items()}
    colors = {raw: list(SEMANTIC_KITTI.colors_rgb[i][::-1]) for i, raw in inv.items()}
    names = {raw: SEMANTIC_KITTI.classes[i] for i, raw in inv.items()}
    names[0] = "unlabeled"
    for raw, name in UNLABELED_RAW.items():
        lmap[raw], colors[raw], names[raw] = 0, [0, 0, 255], name
    return {"labels": names, "color_map": colors, "learning_map": lmap, "learning_map_inv": inv,
            "learning_ignore": {i: i == 0 for i in inv},
            "split": {"train": [0, 1, 2, 3, 4, 5, 6, 7, 9, 10], "valid": [8], "test": list(range(11, 22))}}


def street_scene(rng: np.random.Generator) -> tuple:
    """(train-id target uint8 (256, 256, 32), invalid mask) of one frame."""
    t = np.zeros((256, 256, 32), np.uint8)
    y = (np.arange(256) + 0.5) * 0.2 - 25.6  # metres, left positive
    lateral = np.abs(y)
    ground = np.where(lateral < 4.5, C["road"], np.where(lateral < 7.0, C["sidewalk"], C["terrain"]))
    t[:, :, 1] = ground[None, :]
    gap = int(rng.integers(60, 180))
    for side in (-1, 1):  # building rows with a gap, 13-16 m to each side
        cols = np.nonzero((lateral > 13) & (lateral < 16) & (np.sign(y) == side))[0]
        t[: gap - 10, cols, 2:int(rng.integers(14, 26))] = C["building"]
        t[gap + 10:, cols, 2:int(rng.integers(14, 26))] = C["building"]
    for _ in range(int(rng.integers(2, 5))):  # cars on the road
        x0 = int(rng.integers(20, 220))
        y0 = int(np.searchsorted(y, rng.uniform(-3.5, 1.5)))
        t[x0:x0 + 20, y0:y0 + 9, 2:9] = C["car"]
    for _ in range(4):  # trees (trunk + crown) on the terrain, poles on the sidewalk edge
        x0 = int(rng.integers(10, 230))
        yc = int(np.searchsorted(y, rng.choice([-1, 1]) * rng.uniform(8, 11)))
        t[x0:x0 + 2, yc:yc + 2, 2:10] = C["trunk"]
        t[x0 - 4:x0 + 6, yc - 4:yc + 6, 10:16] = C["vegetation"]
        xp = int(rng.integers(10, 240))
        t[xp, int(np.searchsorted(y, 6.8 * rng.choice([-1, 1]))), 2:16] = C["pole"]
    invalid = np.zeros(t.shape, bool)
    invalid[:, :, 0] = True
    invalid[240:] = True
    return t, invalid


def textured_image(rng: np.random.Generator, hw=IMAGE_HW) -> np.ndarray:
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6.3)
        img[..., c] = 110 + 60 * np.sin(u * fx + ph) * np.cos(v * fy) + 40 * (v / h)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(h // 3, h - 40))
        img[y0:y0 + int(rng.integers(20, 60)), x0:x0 + int(rng.integers(30, 160))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_frame(seq_dir: Path, frame: str, rng: np.random.Generator) -> None:
    target, invalid = street_scene(rng)
    raw = np.asarray(RAW_IDS, np.uint16)[target]
    raw[invalid] = 0
    write_voxel_file(seq_dir / "voxels" / f"{frame}.label", raw)
    write_voxel_file(seq_dir / "voxels" / f"{frame}.invalid", invalid)
    occ = np.argwhere((target > 0) & ~invalid)
    pick = occ[rng.choice(len(occ), size=min(len(occ), 20000), replace=False)]
    pts = (pick + rng.uniform(0, 1, pick.shape)) * 0.2 + np.array([0.0, -25.6, -2.0])
    scan = np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], axis=1).astype(np.float32)
    scan.tofile(seq_dir / "velodyne" / f"{frame}.bin")
    left = textured_image(rng)
    right = np.roll(left, -12, axis=1)
    cv2.imwrite(str(seq_dir / "image_2" / f"{frame}.png"), left[..., ::-1])
    cv2.imwrite(str(seq_dir / "image_3" / f"{frame}.png"), right[..., ::-1])


def make_fake_semantickitti(root: Path, frames: Dict[str, int] = None, seed: int = 0) -> Path:
    frames = {"00": 4, "08": 2} if frames is None else frames
    root.mkdir(parents=True, exist_ok=True)
    (root / "semantic-kitti.yaml").write_text(yaml.safe_dump(label_yaml()))
    real_calib = DATA_ROOT / "semantickitti-mini" / "sequences" / "08" / "calib.txt"
    for s, (seq, n) in enumerate(sorted(frames.items())):
        seq_dir = root / "sequences" / seq
        for sub in ("image_2", "image_3", "velodyne", "voxels"):
            (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        if real_calib.is_file():
            shutil.copyfile(real_calib, seq_dir / "calib.txt")
        else:
            (seq_dir / "calib.txt").write_text(SEQ08_CALIB)
        pose = " ".join(f"{v:.1f}" for v in np.eye(4)[:3].ravel())
        (seq_dir / "poses.txt").write_text("\n".join([pose] * n) + "\n")
        for i in range(n):
            write_frame(seq_dir, f"{i:06d}", np.random.default_rng(seed * 1000 + s * 100 + i))
    return root


@pytest.fixture(scope="session")
def fake_kitti(tmp_path_factory) -> Path:
    """Built once per session even when several modules import this fixture (each import is its own fixture
    definition, so the directory doubles as the cache)."""
    root = tmp_path_factory.getbasetemp() / "fake_semantickitti"
    if not (root / "done").is_file():
        make_fake_semantickitti(root)
        (root / "done").write_text("ok\n")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny-variant checkpoint (mono mode, SemanticKITTI classes), written once per session."""
    import torch

    from scanssc_ros import checkpoint
    from scanssc_ros.config import variant
    from scanssc_ros.model.scanssc import ScanSSC

    path = tmp_path_factory.getbasetemp() / "tiny_untrained.pt"
    if not path.is_file():
        torch.manual_seed(0)
        cfg = variant("tiny")
        checkpoint.save(path, ScanSSC(cfg), cfg, extra={"depth_mode": "mono", "label_set": "semantickitti"})
    return path
