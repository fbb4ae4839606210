"""scanssc-infer: run a checkpoint on a SemanticKITTI sequence or an image folder; save predictions and renders.

    scanssc-infer --checkpoint best.pt --sequence /data/semantickitti/sequences/08 --limit 20 --out infer/08
    scanssc-infer --checkpoint best.pt --images left/ --right-images right/ --calib calib.txt --out infer/mine

Every frame goes through ``scanssc_ros.predictor.Predictor`` (the one inference entry point: its resize / crop /
normalisation and precision handling), with SGBM stereo depth from the right image in stereo mode. Writes to
--out: ``predictions/<frame>.npy`` (uint8 labels on the model grid) and/or ``predictions/<frame>.label``
(official uint16 raw ids on the 256x256x32 grid, a coarser model grid repeated up to it), and
``renders/<frame>.png`` (input image, shaded 3D voxels from behind the camera, bird's-eye view, occupancy grid;
with ground truth also its 3D view and bird's-eye view and a right/wrong map; ``scanssc_ros.render``) and, with
``--export ply``, ``ply/<frame>.ply`` (and ``ply/<frame>_gt.ply``): the occupied voxels with colour and class id
(``scanssc_ros.ply_export``). Ground truth of a sequence frame (``--ground-truth auto``): the official
``voxels/<frame>.label`` when present, else the labelled LiDAR scan voxelized (LiDAR-sparse), else none.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from scanssc_ros import checkpoint
from scanssc_ros.cli.common import run_main
from scanssc_ros.data.depth import stereo_depth
from scanssc_ros.data.image import load_rgb
from scanssc_ros.data.label_scale import downsample_labels, grid_factor, upsample_labels
from scanssc_ros.data.labels_io import LabelConfig, export_prediction, load_label_config
from scanssc_ros.data.semantickitti import SemanticKittiDataset
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, kitti_camera, read_kitti_calib, stereo_baseline
from scanssc_ros.labels import LABEL_SETS, SEMANTIC_KITTI
from scanssc_ros.ply_export import FORMS as PLY_FORMS
from scanssc_ros.ply_export import write_ply
from scanssc_ros.predictor import Predictor
from scanssc_ros.render import render_grid, renderer_line
from scanssc_ros.render_o3d import SensorCamera
from scanssc_ros.training.amp import PRECISIONS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sequence", help="SemanticKITTI sequence directory (image_2, image_3, calib.txt)")
    src.add_argument("--images", help="folder of left images (needs --calib)")
    p.add_argument("--right-images", help="folder of right images with the same names (stereo mode)")
    p.add_argument("--calib", help="KITTI calib.txt with P2, Tr (and P3 for stereo); default: <sequence>/calib.txt")
    p.add_argument("--frames", help="frame names (file stems), comma-separated")
    p.add_argument("--limit", type=int, help="only the first N frames")
    p.add_argument("--depth-mode", choices=("auto", "stereo", "mono"), default="auto",
                   help="auto: the checkpoint's training mode, mono when no right images exist")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("npy", "label", "both"), default="npy")
    p.add_argument("--label-config", help="label yaml for .label export (default: <sequence>/../../"
                                          "semantic-kitti.yaml)")
    p.add_argument("--no-render", action="store_true", help="skip the PNG renders")
    p.add_argument("--v1-z-shift", action="store_true",
                   help="ground truth is SemanticKITTI v1.0 data (voxel files one layer too high), as the sample")
    p.add_argument("--export", choices=("none", "ply"), default="none",
                   help="ply: also write the predicted (and ground-truth) voxels to ply/<frame>.ply")
    p.add_argument("--ply-form", choices=PLY_FORMS, default="points",
                   help="points: voxel centres; mesh: the voxels' visible faces")
    p.add_argument("--ground-truth", choices=("auto", "none", "voxel_label", "sparse"), default="auto",
                   help="ground truth shown in the renders / exported (sequences only; needs the label yaml)")
    p.add_argument("--mark-unseen", action="store_true", help="voxels outside the camera view -> 255")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def list_frames(folder: Path, names: Optional[str], limit: Optional[int]) -> List[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        by_stem = {f.stem: f for f in files}
        missing = [n for n in wanted if n not in by_stem]
        if missing:
            raise FileNotFoundError(f"no image for frame(s) {missing} in {folder}")
        files = [by_stem[n] for n in wanted]
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def resolve_sources(args: argparse.Namespace) -> Tuple[Path, Optional[Path], Path, Optional[Path]]:
    """(left folder, right folder or None, calib file, default label yaml or None)."""
    if args.sequence:
        seq = Path(args.sequence)
        left, right = seq / "image_2", seq / "image_3"
        calib = Path(args.calib) if args.calib else seq / "calib.txt"
        label_yaml = seq.parent.parent / "semantic-kitti.yaml"
    else:
        left, right = Path(args.images), Path(args.right_images) if args.right_images else None
        if not args.calib:
            raise ValueError("--images needs --calib")
        calib, label_yaml = Path(args.calib), None
    if args.right_images:
        right = Path(args.right_images)
    for name, path in (("image folder", left), ("calibration", calib)):
        if not path.exists():
            raise FileNotFoundError(f"{name} not found: {path}")
    return left, right if right is not None and right.is_dir() else None, calib, label_yaml


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_main("scanssc-infer", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    left_dir, right_dir, calib_path, default_yaml = resolve_sources(args)
    model, config, extra = checkpoint.load(args.checkpoint)
    predictor = Predictor(model, config=config, device=args.device, precision=args.precision,
                          mark_unseen=args.mark_unseen)
    mode = args.depth_mode
    if mode == "auto":
        mode = extra.get("depth_mode", "stereo") if right_dir is not None else "mono"
    if mode == "stereo" and right_dir is None:
        raise ValueError("stereo mode needs right images (--right-images, or image_3 in the sequence)")
    calib = read_kitti_calib(calib_path)
    K, T = kitti_camera(calib, "P2")
    if mode == "stereo":
        if "P3" not in calib:
            raise ValueError(f"{calib_path} has no P3: stereo depth needs the right camera")
        fx, baseline = float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"])
    label_set = LABEL_SETS.get(extra.get("label_set", ""), SEMANTIC_KITTI)
    if predictor.config.num_classes != label_set.num_classes:
        raise ValueError(f"checkpoint predicts {predictor.config.num_classes} classes; no label set matches")
    label_cfg: Optional[LabelConfig] = None
    if args.format in ("label", "both"):
        yaml_path = Path(args.label_config) if args.label_config else default_yaml
        if yaml_path is None or not yaml_path.is_file():
            raise FileNotFoundError("--format label needs a label yaml (--label-config)")
        label_cfg = load_label_config(yaml_path)
    factor = grid_factor(SEMANTIC_KITTI_GRID, predictor.config.grid)
    truth = _truth_reader(args, default_yaml)
    out = Path(args.out)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    colors = label_set.color_table()
    times = []
    files = list_frames(left_dir, args.frames, args.limit)
    for path in tqdm(files, desc="infer", disable=args.no_progress, dynamic_ncols=True):
        image = load_rgb(path)
        depth = None
        if mode == "stereo":
            right = load_rgb(right_dir / path.name)
            depth = stereo_depth(image, right, fx, baseline)
        t0 = time.perf_counter()
        pred = predictor.predict(image, K, T, stereo_depth=depth, p_shift=calib["P2"][:, 3])
        times.append(time.perf_counter() - t0)
        if args.format in ("npy", "both"):
            np.save(out / "predictions" / f"{path.stem}.npy", pred.labels)
        if label_cfg is not None:
            export_prediction(out / "predictions" / f"{path.stem}.label", upsample_labels(pred.labels, factor),
                              label_cfg)
        target, sparse = truth(path.stem) if truth is not None else (None, False)
        if target is not None and factor > 1:
            target = downsample_labels(target, factor, label_set.num_classes)
        grid = predictor.config.grid
        if args.export == "ply":
            write_ply(out / "ply" / f"{path.stem}.ply", pred.labels, grid, colors, label_set.classes, args.ply_form)
            if target is not None:
                write_ply(out / "ply" / f"{path.stem}_gt.ply", target, grid, colors, label_set.classes,
                          args.ply_form)
        if not args.no_render:
            if not times[:-1]:
                print(f"scanssc-infer: {renderer_line()}", file=sys.stderr)
            render_grid(pred.labels, colors, out / "renders" / f"{path.stem}.png", predictor.config.grid_voxel_size,
                        image=image, title=f"{path.stem} ({predictor.config.variant}, {mode})",
                        class_names=label_set.classes, target=target, target_sparse=sparse, grid=grid,
                        camera=SensorCamera(K, T, image.shape[:2]))
    print(f"scanssc-infer: {len(files)} frame(s), {mode} mode, mean {1000 * np.mean(times):.0f} ms per "
          f"prediction; outputs in {out}", file=sys.stderr)
    return 0


def _truth_reader(args: argparse.Namespace, default_yaml: Optional[Path]):
    """frame name -> (ground truth on the 256x256x32 grid or None, whether it is LiDAR-sparse); None when no
    ground truth is wanted or possible (image folders, no label yaml)."""
    if args.ground_truth == "none" or not args.sequence:
        return None
    yaml_path = Path(args.label_config) if args.label_config else default_yaml
    if yaml_path is None or not yaml_path.is_file():
        if args.ground_truth != "auto":
            raise FileNotFoundError(f"--ground-truth {args.ground_truth} needs a label yaml (--label-config)")
        return None
    seq = Path(args.sequence)
    ds = SemanticKittiDataset(seq.parent.parent, frames=[], label_config=yaml_path, with_lidar_depth=False,
                              v1_z_shift=args.v1_z_shift)

    def read(frame: str) -> Tuple[Optional[np.ndarray], bool]:
        source = args.ground_truth
        if source == "auto":
            if (seq / "voxels" / f"{frame}.label").is_file():
                source = "voxel_label"
            elif (seq / "labels" / f"{frame}.label").is_file() and (seq / "velodyne" / f"{frame}.bin").is_file():
                source = "sparse"
            else:
                return None, False
        return ds.load_target(seq.name, frame, source)[0], source == "sparse"

    return read


if __name__ == "__main__":
    sys.exit(main())
