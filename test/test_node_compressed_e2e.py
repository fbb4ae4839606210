"""Compressed input end to end on the real KITTI frames: the sequence -> rosbag2 with raw, PNG- and JPEG-compressed
images (scanssc-kitti2bag) -> the installed scanssc_node with the bundled lite checkpoint, stereo mode, one node
with image_transport raw and one with compressed -> the grids compared voxel by voxel.

PNG is lossless, so its grids must equal the raw path's exactly; JPEG (quality 95, kitti2bag's default full
colour resolution) changes pixels slightly, and through SGBM and the model some voxels: at least 95 % must stay
the same (bench/compressed_agreement.py measures all 10 frames, and OpenCV's usual 4:2:0 subsampling too). The
compressed node is remapped on the base topics only, as a user does with image_transport, so this also checks
that it subscribes to <remapped base topic>/compressed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")
from scanssc_ros.bag.lockstep import installed_executable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = installed_executable()  # the build of the sourced distribution (scripts/env.sh)
PARAMS = REPO / "config" / "scanssc.yaml"
CHECKPOINT = REPO / "models" / "scanssc_lite_synth.pt"
FRAMES = list(range(6))  # of the 10 real frames: enough for a measurement, about a minute of lite inference
LEFT, RIGHT = "/kitti/camera_color_left", "/kitti/camera_color_right"
REMAPS = {"left/image_rect": f"{LEFT}/image_raw", "left/camera_info": f"{LEFT}/camera_info",
          "right/image_rect": f"{RIGHT}/image_raw", "right/camera_info": f"{RIGHT}/camera_info"}
JPEG_OFFSET_S = 1000  # the JPEG bag follows the PNG bag into the same node, later in time


@pytest.fixture(scope="module")
def bags(kitti_seq, tmp_path_factory):
    from scanssc_ros.bag.kitti2bag import convert_sequence, sequence_start

    out = tmp_path_factory.mktemp("compressed_bags")
    start_s = sequence_start(kitti_seq.name)[0] // 10**9
    return {
        "raw": convert_sequence(kitti_seq, out / "raw", frames=FRAMES, tf_static=False).bag,
        "png": convert_sequence(kitti_seq, out / "png", frames=FRAMES, tf_static=False, image_format="png").bag,
        "jpeg": convert_sequence(kitti_seq, out / "jpeg", frames=FRAMES, tf_static=False, image_format="jpeg",
                                 jpeg_quality=95, jpeg_subsampling="444", start_time=start_s + JPEG_OFFSET_S).bag,
    }


def run_node(ctx, transport: str, bag_list, log_dir: Path):
    """Every frame of each bag through one node in lock-step: [[(stamp ns, frame id, labels)] per bag]."""
    from scanssc_ros.bag.lockstep import LockstepPlayer, NodeProcess, bag_frames

    if not EXECUTABLE.is_file():
        pytest.skip(f"{EXECUTABLE} not built; run `make test`")
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} missing")
    name = f"e2e_{transport}_{os.getpid()}"
    contents = [bag_frames(bag) for bag in bag_list]
    types = {t: mt for _, topic_types in contents for t, mt in topic_types.items()}
    image_topics = [t for t in types if "image_raw" in t]
    assert all(t.endswith("/compressed") == (transport == "compressed") for t in image_topics), image_topics
    node = NodeProcess(EXECUTABLE, PARAMS, name, dict(checkpoint=str(CHECKPOINT), image_transport=transport,
                                                      input_reliability="reliable", publish_tf=False),
                       REMAPS, log_path=log_dir / f"{name}.log")
    player = LockstepPlayer(ctx, name, types)
    results = []
    try:
        player.wait_ready(node, list(types))
        for frames, _ in contents:
            got = []
            for t_ns, msgs in frames:
                grid, _ = player.play_frame(msgs, node)
                labels = np.frombuffer(bytes(grid.labels), np.uint8).reshape(grid.size_x, grid.size_y, grid.size_z)
                got.append((grid.header.stamp.sec * 10**9 + grid.header.stamp.nanosec, grid.header.frame_id,
                            labels.copy()))
                assert got[-1][0] == t_ns
            results.append(got)
    finally:
        player.close()
        code = node.stop()
    log = node.output()
    assert code == 0 and "Traceback" not in log and "frame skipped" not in log, log
    assert f"image_transport={transport}" in log, log
    return results


def test_png_equals_raw_and_jpeg_is_close(ros_context, bags, tmp_path):
    (raw,) = run_node(ros_context, "raw", [bags["raw"]], tmp_path)
    png, jpeg = run_node(ros_context, "compressed", [bags["png"], bags["jpeg"]], tmp_path)
    assert len(raw) == len(png) == len(jpeg) == len(FRAMES)
    lines = []
    for i, ((t_raw, f_raw, l_raw), (t_png, f_png, l_png), (t_jpg, f_jpg, l_jpg)) in enumerate(zip(raw, png, jpeg)):
        assert t_png == t_raw and t_jpg == t_raw + JPEG_OFFSET_S * 10**9
        assert f_raw == f_png == f_jpg == "camera_color_left"
        assert np.array_equal(l_png, l_raw), f"frame {i}: PNG input changed {np.count_nonzero(l_png != l_raw)} voxels"
        same = float(np.mean(l_jpg == l_raw))
        occupied = (l_raw != 0) | (l_jpg != 0)
        same_occupied = float(np.mean(l_jpg[occupied] == l_raw[occupied])) if occupied.any() else 1.0
        lines.append(f"frame {FRAMES[i]}: JPEG q95 labels equal to raw: {100 * same:.2f} % of all voxels, "
                     f"{100 * same_occupied:.2f} % of the {int(occupied.sum())} voxels occupied in either")
        assert same >= 0.95, lines[-1]
    print("\n" + "\n".join(lines))
