"""Arguments shared by the scanssc-* commands (dataset location and content), and their error convention:
a user error prints ``<prog>: error: <message>`` and exits with status 2, without a traceback."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from scanssc_ros.data.sample import TARGET_SOURCES
from scanssc_ros.training.data import DATASETS, DEPTH_MODES, DataOptions

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def add_data_args(p: argparse.ArgumentParser, depth_default: str = "stereo") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", required=True, help="dataset root (SemanticKITTI: holds sequences/)")
    g.add_argument("--dataset", choices=DATASETS, default="semantickitti", help="dataset layout and label set")
    g.add_argument("--target-source", choices=TARGET_SOURCES, default="auto",
                   help="where the ground truth comes from (see data.semantickitti); kitti360: auto/preprocessed")
    g.add_argument("--depth-mode", choices=DEPTH_MODES, default=depth_default,
                   help="stereo: SGBM depth (or --stereo-cache) is a model input, as in the paper; mono: none")
    g.add_argument("--stereo-cache", help="directory of cached stereo depth <dir>/sequences/<seq>/<frame>.npy "
                                          "(e.g. the official MobileStereoNet depth); SGBM results are written there")
    g.add_argument("--lidar-depth", action=argparse.BooleanOptionalAction, default=None,
                   help="read LiDAR scans for the depth loss (default: on for semantickitti, off for kitti360)")
    g.add_argument("--label-config", help="label yaml (default: <data-root>/semantic-kitti.yaml)")
    g.add_argument("--labels-root", help="preprocessed NNNNNN_1_1.npy targets (default: <data-root>/labels)")
    g.add_argument("--v1-z-shift", action="store_true", help="voxel files are SemanticKITTI v1.0 (one layer high)")


def data_options(args: argparse.Namespace) -> DataOptions:
    lidar = args.lidar_depth if args.lidar_depth is not None else args.dataset == "semantickitti"
    return DataOptions(kind=args.dataset, root=args.data_root, target_source=args.target_source,
                       depth_mode=args.depth_mode, stereo_cache=args.stereo_cache, lidar_depth=lidar,
                       label_config=args.label_config, labels_root=args.labels_root, v1_z_shift=args.v1_z_shift)


def load_mapping(path: str) -> Dict[str, Any]:
    """A JSON or YAML file holding one mapping."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text()
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config fields")
    return data


def int_list(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    return [int(v) for v in text.split(",") if v.strip()]


def run_main(prog: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
