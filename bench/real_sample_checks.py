"""Checks of the data pipeline on the real SemanticKITTI sample (sequence 08).

(a) SGBM stereo depth against projected LiDAR, at the original resolution: abs-rel, share within 1 m, density,
    overall and per LiDAR-distance band.
(b) Voxelized labelled scans vs the stored ``voxels/*.bin`` occupancy, as stored and shifted down one layer
    (the SemanticKITTI v1.0 offset).

Usage: python bench/real_sample_checks.py [--data ../shared/data] [--frames 0 5] [--out bench/results/...json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scanssc_ros.data.depth import SgbmParams, lidar_depth_map, stereo_depth  # noqa: E402
from scanssc_ros.data.image import load_rgb  # noqa: E402
from scanssc_ros.data.labels_io import read_packed_voxels, read_scan  # noqa: E402
from scanssc_ros.data.sparse_gt import occupancy_iou, read_voxel_mask, voxel_occupancy  # noqa: E402
from scanssc_ros.geometry import kitti_camera, read_kitti_calib, stereo_baseline  # noqa: E402

BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, np.inf))


def depth_errors(stereo: np.ndarray, lidar: np.ndarray) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for lo, hi in ((0.0, np.inf),) + BANDS:
        in_band = (lidar > lo) & (lidar <= hi)
        both = in_band & (stereo > 0)
        name = "all" if (lo, hi) == (0.0, np.inf) else (f"{lo:.0f}+" if hi == np.inf else f"{lo:.0f}-{hi:.0f}")
        if not both.any():
            out[name] = {"lidar_pixels": int(in_band.sum()), "stereo_density": 0.0}
            continue
        err = np.abs(stereo[both] - lidar[both])
        rel = err / lidar[both]
        out[name] = {
            "lidar_pixels": int(in_band.sum()),
            "stereo_density": float(both.sum() / in_band.sum()),  # LiDAR pixels where SGBM has a depth
            "abs_rel_mean": float(rel.mean()),
            "abs_rel_median": float(np.median(rel)),
            "within_1m": float((err < 1.0).mean()),
            "abs_err_median_m": float(np.median(err)),
        }
    return out


def main(argv: List[str] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "real_sample_checks.json")
    args = ap.parse_args(argv)
    seq = args.data / "semantickitti-mini" / "sequences" / "08"
    calib = read_kitti_calib(seq / "calib.txt")
    K, T = kitti_camera(calib)
    fx, baseline = float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"])
    params = SgbmParams()
    result: Dict = {"sequence": "08", "sgbm": {k: getattr(params, k) for k in params.__dataclass_fields__},
                    "baseline_m": baseline, "fx": fx, "stereo": {}, "voxelization": {}}
    pooled_stereo, pooled_lidar = [], []
    for f in args.frames:
        fid = f"{f:06d}"
        left, right = load_rgb(seq / "image_2" / f"{fid}.png"), load_rgb(seq / "image_3" / f"{fid}.png")
        stereo = stereo_depth(left, right, fx, baseline, params)
        scan = read_scan(seq / "velodyne" / f"{fid}.bin")
        lidar = lidar_depth_map(scan, K, T, left.shape[:2])
        result["stereo"][fid] = {"stereo_valid_fraction": float((stereo > 0).mean()),
                                 "bands": depth_errors(stereo, lidar)}
        pooled_stereo.append(stereo.reshape(-1))
        pooled_lidar.append(lidar.reshape(-1))
        vox = seq / "voxels" / f"{fid}.bin"
        if vox.is_file():
            occ = voxel_occupancy(scan)
            result["voxelization"][fid] = {
                "iou_as_stored": occupancy_iou(occ, read_packed_voxels(vox)),
                "iou_shifted_down_one_layer": occupancy_iou(occ, read_voxel_mask(vox, True, False)),
                "occupied_voxels_scan": int(occ.sum()),
            }
    if len(args.frames) > 1:  # every LiDAR pixel of every frame counted once: the summary a README quotes
        stereo, lidar = np.concatenate(pooled_stereo), np.concatenate(pooled_lidar)
        result["stereo"]["pooled"] = {"stereo_valid_fraction": float((stereo > 0).mean()),
                                      "frames": len(args.frames), "bands": depth_errors(stereo, lidar)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_report(result)
    print(f"wrote {args.out}")
    return result


def print_report(result: Dict) -> None:
    print(f"SGBM vs LiDAR (seq 08, baseline {result['baseline_m']:.4f} m, fx {result['fx']:.1f})")
    print(f"{'frame':<8}{'band':<8}{'lidar px':>9}{'density':>9}{'absrel':>8}{'med':>7}{'<1m':>7}{'med err':>9}")
    for fid, r in result["stereo"].items():
        for band, b in r["bands"].items():
            if "abs_rel_mean" not in b:
                print(f"{fid:<8}{band:<8}{b['lidar_pixels']:>9d}{'-':>9}")
                continue
            print(f"{fid:<8}{band:<8}{b['lidar_pixels']:>9d}{b['stereo_density']:>9.2f}{b['abs_rel_mean']:>8.3f}"
                  f"{b['abs_rel_median']:>7.3f}{b['within_1m']:>7.2f}{b['abs_err_median_m']:>8.2f}m")
        print(f"{fid:<8}SGBM depth on {100 * r['stereo_valid_fraction']:.1f}% of the image")
    print("voxelized scan vs voxels/*.bin occupancy IoU")
    for fid, v in result["voxelization"].items():
        print(f"{fid:<8}as stored {v['iou_as_stored']:.3f}   shifted down one layer "
              f"{v['iou_shifted_down_one_layer']:.3f}   ({v['occupied_voxels_scan']} voxels)")


if __name__ == "__main__":
    main()
