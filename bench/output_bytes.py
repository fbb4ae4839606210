"""Bytes per frame of every output the node publishes, for each ~/voxels encoding, on the real KITTI sample.

    python bench/output_bytes.py [--data ../shared/data] [--frame 0] [--reps 5] [--out bench/results/output_bytes.json]

Two grids of sequence 08: the bundled lite checkpoint's prediction (stereo, the node's default mark_unseen, so out
of view is 255) and the voxelized labelled LiDAR of ten scans (``sparse_gt``, the kind of sparse street scene a
trained model predicts). Sizes are the serialized CDR a subscriber receives; encode = building + serializing the
message, decode = ``grid_codec.decode_grid`` on the received message (thread CPU time, median of ``--reps``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from scanssc_ros.msg import SemanticVoxelGrid  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, kitti_camera, read_kitti_calib  # noqa: E402
from scanssc_ros.grid_codec import ENCODINGS, decode_grid  # noqa: E402
from scanssc_ros.labels import SEMANTIC_KITTI  # noqa: E402
from scanssc_ros.occupancy import DEFAULT_TRAVERSABLE, ObstacleFilter, OccupancyRule  # noqa: E402
from scanssc_ros.ros.grid_message import to_grid_message  # noqa: E402
from scanssc_ros.ros.outputs import OutputBuilder, OutputOptions  # noqa: E402
from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID  # noqa: E402


def cpu_ms(fn: Callable[[], object], reps: int) -> float:
    times: List[float] = []
    for _ in range(reps):
        t = time.thread_time()
        fn()
        times.append((time.thread_time() - t) * 1e3)
    return statistics.median(times)


def lite_prediction(seq: Path, frame: int):
    from scanssc_ros.data.depth import stereo_depth
    from scanssc_ros.data.image import load_rgb
    from scanssc_ros.geometry import stereo_baseline
    from scanssc_ros.predictor import Predictor

    calib = read_kitti_calib(seq / "calib.txt")
    K, _ = kitti_camera(calib)
    left = load_rgb(seq / "image_2" / f"{frame:06d}.png")
    right = load_rgb(seq / "image_3" / f"{frame:06d}.png")
    depth = stereo_depth(left, right, float(calib["P2"][0, 0]), stereo_baseline(calib["P2"], calib["P3"]))
    pred = Predictor(REPO / "models" / "scanssc_lite_synth.pt", mark_unseen=True)
    T = np.asarray(KITTI_CAM_FROM_GRID, np.float64).reshape(4, 4)
    out = pred.predict(left, K, T, stereo_depth=depth, p_shift=calib["P2"][:3, 3])
    return out.labels, out.confidence


def lidar_grid(seq: Path, frame: int, data: Path):
    from scanssc_ros.data.labels_io import load_label_config
    from scanssc_ros.data.sparse_gt import sequence_sparse_gt

    cfg = load_label_config(data / "semantickitti-mini" / "semantic-kitti.yaml")
    labels, _ = sequence_sparse_gt(seq, frame, cfg, offsets=range(10), v1_z_shift=True)
    conf = np.where(labels > 0, 230, 250).astype(np.uint8)  # a plausible confidence: fixed, so it compresses
    return labels.astype(np.uint8), conf


def measure(labels: np.ndarray, conf: np.ndarray, reps: int) -> Dict[str, Dict[str, float]]:
    header = Header(frame_id="camera_color_left")
    T = np.asarray(KITTI_CAM_FROM_GRID, np.float64).reshape(4, 4)
    out: Dict[str, Dict[str, float]] = {}
    for enc in ENCODINGS:
        for with_conf in (True, False):
            c = conf if with_conf else None

            def build(c=c, enc=enc):
                return serialize_message(to_grid_message(labels, SEMANTIC_KITTI_GRID, header, SEMANTIC_KITTI, T, c,
                                                         encoding=enc))

            raw = build()
            msg = deserialize_message(raw, SemanticVoxelGrid)
            assert np.array_equal(decode_grid(msg)[0], labels)
            key = f"voxels/{enc}" + ("" if with_conf else "/no_confidence")
            out[key] = {"bytes": len(raw), "encode_ms": cpu_ms(build, reps),
                        "decode_ms": cpu_ms(lambda m=msg: decode_grid(m), reps)}
    # the other outputs with the shipped parameters (surface voxels drawn, at most 200k)
    rule = OccupancyRule.from_names(DEFAULT_TRAVERSABLE, SEMANTIC_KITTI.classes)
    opts = OutputOptions(occupancy=rule, obstacles=ObstacleFilter(rule), publish_grid=False)
    msgs, _ = OutputBuilder(SEMANTIC_KITTI_GRID, SEMANTIC_KITTI, T).build(labels, conf, header.stamp,
                                                                          "camera_color_left", opts)
    for name, m in msgs.items():
        out[name] = {"bytes": len(m) if isinstance(m, bytes) else len(serialize_message(m))}
    return out


def markdown(results: Dict) -> str:
    """The README table: kB per frame (encode / decode ms) per output and sample."""
    names = list(results)
    rows = [k for k in results[names[0]] if not k.startswith("_")]
    lines = ["| output | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for n in names:
            v = results[n][row]
            cell = f"{v['bytes'] / 1e3:,.0f} kB"
            if "encode_ms" in v:
                cell += f" ({v['encode_ms']:.1f} / {v['decode_ms']:.1f} ms)"
            cells.append(cell)
        lines.append(f"| `{row}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "output_bytes.json")
    args = ap.parse_args(argv)
    seq = args.data / "semantickitti-mini" / "sequences" / "08"
    if not (seq / "calib.txt").is_file():
        sys.exit(f"output_bytes: the KITTI sample is not at {seq} (see ../shared/data/README.md)")
    results = {}
    lidar, lidar_conf = lidar_grid(seq, args.frame, args.data)
    samples = {"lite_prediction": lite_prediction(seq, args.frame), "lidar_labels": (lidar, lidar_conf),
               # sparse's best case: no unknown voxels to list (mark_unseen false, a model that leaves space empty)
               "lidar_labels_unknown_as_empty": (np.where(lidar == 255, 0, lidar).astype(np.uint8), lidar_conf)}
    for name, (labels, conf) in samples.items():
        r = measure(labels, conf, args.reps)
        r["_grid"] = {"occupied": int(((labels != 0) & (labels != 255)).sum()), "unknown": int((labels == 255).sum())}
        results[name] = r
        print(f"{name}: {r['_grid']['occupied']:,} occupied, {r['_grid']['unknown']:,} unknown voxels")
        for key, v in r.items():
            if key.startswith("_"):
                continue
            times = f"  encode {v['encode_ms']:6.1f} ms  decode {v['decode_ms']:5.1f} ms" if "encode_ms" in v else ""
            print(f"  {key:34s}{v['bytes'] / 1e3:10.1f} kB{times}")
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"frame": args.frame, "sequence": "08", "note": "thread CPU time; bytes are "
                                    "serialized CDR", "results": results}, indent=1))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
