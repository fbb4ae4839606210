"""How much compressed camera input changes the node's grids, on the real SemanticKITTI sample (sequence 08).

Each frame goes through the node's own FrameProcessor (decode, SGBM stereo prior, Predictor) once as raw images
and once per compressed variant, encoded the way scanssc-kitti2bag encodes them; the labels are compared voxel by
voxel with the raw path's: over all 256x256x32 voxels, and over the voxels occupied in either grid.

Usage: python bench/compressed_agreement.py [--data ../shared/data] [--frames 0-9]
                                            [--checkpoint models/scanssc_lite_synth.pt] [--out bench/results/...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scanssc_ros.bag.kitti2bag import _encode, _jpeg_params, parse_frames  # noqa: E402
from scanssc_ros.geometry import read_kitti_calib  # noqa: E402
from scanssc_ros.predictor import Predictor  # noqa: E402
from scanssc_ros.ros.frame_processor import FrameProcessor  # noqa: E402
from scanssc_ros.ros.frame_sync import FrameSet  # noqa: E402
from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID  # noqa: E402

VARIANTS = {  # name -> (codec, jpeg quality, chroma subsampling)
    "png": ("png", 0, ""),
    "jpeg q95 4:4:4": ("jpeg", 95, "444"),
    "jpeg q95 4:2:0": ("jpeg", 95, "420"),
    "jpeg q80 4:2:0": ("jpeg", 80, "420"),
}


def main() -> None:
    import cv2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--frames", default="0-9")
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "scanssc_lite_synth.pt")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "compressed_agreement.json")
    args = p.parse_args()

    seq = args.data / "semantickitti-mini" / "sequences" / "08"
    calib = read_kitti_calib(seq / "calib.txt")
    processor = FrameProcessor(Predictor(args.checkpoint, device="cpu"), np.asarray(KITTI_CAM_FROM_GRID).reshape(4, 4),
                               use_cv_bridge=False)
    header = NS(stamp=NS(sec=0, nanosec=0), frame_id="camera_color_left")

    def info(key: str, w: int, h: int) -> NS:
        P = calib[key]
        return NS(width=w, height=h, k=P[:, :3].reshape(-1), p=P.reshape(-1), d=[0.0] * 5, header=header)

    def raw(bgr: np.ndarray) -> NS:
        h, w = bgr.shape[:2]
        return NS(height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3, data=bgr.tobytes(), header=header)

    def compressed(bgr: np.ndarray, codec: str, quality: int, subsampling: str) -> NS:
        params = _jpeg_params(quality, subsampling) if codec == "jpeg" else []
        data = _encode(bgr, codec, params, 3).tobytes()
        return NS(format=f"rgb8; {codec} compressed bgr8", data=data, header=header)

    rows = []
    for frame in parse_frames(args.frames):
        left, right = (cv2.imread(str(seq / d / f"{frame:06d}.png"), cv2.IMREAD_COLOR) for d in ("image_2", "image_3"))
        h, w = left.shape[:2]
        infos = info("P2", w, h), info("P3", w, h)

        def run(lmsg: NS, rmsg: NS, infos=infos) -> np.ndarray:
            return processor.process(FrameSet(left=lmsg, left_info=infos[0], right=rmsg,
                                              right_info=infos[1])).prediction.labels

        t = time.perf_counter()
        ref = run(raw(left), raw(right))
        row = {"frame": frame, "seconds_per_run": round(time.perf_counter() - t, 2), "variants": {}}
        for name, (codec, quality, sub) in VARIANTS.items():
            lmsg, rmsg = compressed(left, codec, quality, sub), compressed(right, codec, quality, sub)
            labels = run(lmsg, rmsg)
            occupied = (ref != 0) | (labels != 0)
            row["variants"][name] = {
                "equal_all": round(float(np.mean(labels == ref)), 5),
                "equal_occupied": round(float(np.mean(labels[occupied] == ref[occupied])), 5),
                "kb_per_image": round(len(lmsg.data) / 1024, 1),
            }
        rows.append(row)
        print(f"frame {frame}: " + ", ".join(f"{n} {100 * v['equal_all']:.2f} % ({v['kb_per_image']:.0f} kB)"
                                              for n, v in row["variants"].items()), flush=True)
    summary = {name: {"equal_all_min": min(r["variants"][name]["equal_all"] for r in rows),
                      "equal_all_mean": round(float(np.mean([r["variants"][name]["equal_all"] for r in rows])), 5),
                      "equal_occupied_mean": round(float(np.mean([r["variants"][name]["equal_occupied"]
                                                                  for r in rows])), 5)}
               for name in VARIANTS}
    for name, s in summary.items():
        print(f"{name}: labels equal to raw on {100 * s['equal_all_min']:.2f} % (min) / "
              f"{100 * s['equal_all_mean']:.2f} % (mean) of all voxels; {100 * s['equal_occupied_mean']:.2f} % "
              "(mean) of the voxels occupied in either grid")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint.name), "sequence": "08", "mode": "stereo",
                                    "raw_kb_per_image": round(left.nbytes / 1024, 1), "summary": summary,
                                    "frames": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
