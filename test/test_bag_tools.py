"""kitti2bag on the real sample (MCAP and sqlite3), read back with rosbags; bag errors; playback schedule."""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")
cv2 = pytest.importorskip("cv2")

from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from scanssc_ros.bag.kitti2bag import (  # noqa: E402
    UNKNOWN_DATE_START,
    FrameIds,
    KittiBagError,
    convert_sequence,
    main,
    parse_frames,
    read_times_ns,
    seconds_to_ns,
    sequence_start,
)
from scanssc_ros.bag.play import BagError, PlayStats, bag_topics, iter_raw, open_bag, play_messages  # noqa: E402
from scanssc_ros.geometry import kitti_camera, quaternion_to_rotation, read_kitti_calib  # noqa: E402
from scanssc_ros.ros.compressed_decode import compressed_to_rgb  # noqa: E402
from scanssc_ros.ros.image_decode import camera_info_to_intrinsics, image_to_rgb  # noqa: E402
from scanssc_ros.ros.params import KITTI_CAM_FROM_GRID, node_params_from_yaml, validate_values  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAMES = [0, 1]
LEFT = "/kitti/camera_color_left"
RIGHT = "/kitti/camera_color_right"


def read_all(bag: Path) -> dict:
    out: dict = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns, reader.deserialize(raw, conn.msgtype)))
    return out


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def converted(request, kitti_seq: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "bag"
    summary = convert_sequence(kitti_seq, out, storage=request.param, frames=FRAMES, velodyne=True, clock=True)
    return SimpleNamespace(storage=request.param, bag=out, summary=summary, msgs=read_all(out))


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_topics_and_counts(converted) -> None:
    n = len(FRAMES)
    expected = {f"{LEFT}/image_raw": n, f"{LEFT}/camera_info": n, f"{RIGHT}/image_raw": n,
                f"{RIGHT}/camera_info": n, "/kitti/velo/pointcloud": n, "/clock": n, "/tf_static": 1}
    assert {t: len(v) for t, v in converted.msgs.items()} == expected
    assert converted.summary.counts == expected
    meta = (converted.bag / "metadata.yaml").read_text()
    assert "version: 8" in meta and f"storage_identifier: {converted.storage}" in meta


def exact_ns(text: str) -> int:
    """A decimal string of seconds -> nanoseconds, through exact rational arithmetic (no floats, no Decimal)."""
    value = Fraction(text.strip()) * 10**9
    assert value.denominator == 1, text  # KITTI's times have at most 7 decimals
    return int(value)


SEQ08_START_NS = int(datetime.datetime(2011, 9, 30, 12, tzinfo=datetime.timezone.utc).timestamp()) * 10**9


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_stamps_are_exact_nanoseconds(converted, kitti_seq: Path) -> None:
    lines = (kitti_seq / "times.txt").read_text().split()
    for topic in (f"{LEFT}/image_raw", f"{RIGHT}/camera_info", "/kitti/velo/pointcloud"):
        for (t_ns, msg), frame in zip(converted.msgs[topic], FRAMES):
            want = SEQ08_START_NS + exact_ns(lines[frame])
            assert t_ns == want
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == want
    clock_ns = [c.clock.sec * 10**9 + c.clock.nanosec for _, c in converted.msgs["/clock"]]
    assert clock_ns == [t for t, _ in converted.msgs[f"{LEFT}/image_raw"]]


def test_times_parse_exactly(kitti_seq: Path) -> None:
    lines = (kitti_seq / "times.txt").read_text().split()
    exact = [exact_ns(t) for t in lines]
    assert read_times_ns(kitti_seq / "times.txt") == exact
    # what the converter did before: a float sum of the start and the time, rounded once
    start_s = SEQ08_START_NS // 10**9
    float_sum = [int(round((float(start_s) + float(t)) * 1e9)) for t in lines]
    off = [abs(a - start_s * 10**9 - b) for a, b in zip(float_sum, exact)]
    assert sum(o > 0 for o in off) > len(off) // 2 and max(off) > 100, max(off)  # the test can tell the two apart
    print(f"\nfloat sum vs exact: {sum(o > 0 for o in off)} of {len(off)} stamps off, by up to {max(off)} ns")
    assert seconds_to_ns("1.039920e-01") == 103_992_000 and seconds_to_ns(0.1) == 100_000_000
    assert seconds_to_ns("1317384000.123456789") == 1_317_384_000_123_456_789
    assert seconds_to_ns("2.5e-9") == 2 and seconds_to_ns("3.5e-9") == 4  # half to even beyond 1 ns
    for bad in ("nan", "inf", "abc", ""):
        with pytest.raises(ValueError):
            seconds_to_ns(bad)


def test_recording_dates() -> None:
    def day(name: str) -> str:
        ns, _ = sequence_start(name)
        when = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
        assert (when.hour, when.minute, when.second, ns % 10**9) == (12, 0, 0, 0) or ns == UNKNOWN_DATE_START * 10**9
        return f"{when:%Y-%m-%d}"

    # the devkit's odometry -> raw drive table: 00-02 2011_10_03, 03 2011_09_26, 04-10 2011_09_30
    assert [day(f"{i:02d}") for i in range(11)] == ["2011-10-03"] * 3 + ["2011-09-26"] + ["2011-09-30"] * 7
    for unknown in ("11", "21", "8", "seq08", ""):
        ns, note = sequence_start(unknown)
        assert ns == UNKNOWN_DATE_START * 10**9 and "unknown" in note and day(unknown) == "2000-01-01"
    assert sequence_start("08")[0] == SEQ08_START_NS
@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_images_are_the_pngs(converted, kitti_seq: Path) -> None:
    for side, folder, frame_id in ((LEFT, "image_2", "camera_color_left"), (RIGHT, "image_3", "camera_color_right")):
        for (_, msg), frame in zip(converted.msgs[f"{side}/image_raw"], FRAMES):
            png = cv2.cvtColor(cv2.imread(str(kitti_seq / folder / f"{frame:06d}.png")), cv2.COLOR_BGR2RGB)
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", *png.shape[:2], png.shape[1] * 3)
            assert msg.header.frame_id == frame_id
            np.testing.assert_array_equal(image_to_rgb(msg), png)


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_camera_info_has_real_projection(converted, kitti_seq: Path) -> None:
    calib = read_kitti_calib(kitti_seq / "calib.txt")
    for side, key in ((LEFT, "P2"), (RIGHT, "P3")):
        for _, info in converted.msgs[f"{side}/camera_info"]:
            np.testing.assert_array_equal(info.p.reshape(3, 4), calib[key])
            np.testing.assert_array_equal(info.k.reshape(3, 3), calib[key][:, :3])
            np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
            assert info.distortion_model == "plumb_bob" and info.d.tolist() == [0.0] * 5
            assert (info.width, info.height) == (1226, 370)
            model = camera_info_to_intrinsics(info)
            np.testing.assert_allclose(model.K, calib[key][:, :3])


def pose_of(ts) -> np.ndarray:
    """TransformStamped -> 4x4 (child coordinates into the parent's)."""
    r, t = ts.transform.rotation, ts.transform.translation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation((r.x, r.y, r.z, r.w))
    T[:3, 3] = (t.x, t.y, t.z)
    return T


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_velodyne_and_tf_static(converted, kitti_seq: Path) -> None:
    for (_, cloud), frame in zip(converted.msgs["/kitti/velo/pointcloud"], FRAMES):
        scan = np.fromfile(kitti_seq / "velodyne" / f"{frame:06d}.bin", "<f4").reshape(-1, 4)
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"]
        assert (cloud.width, cloud.point_step, cloud.header.frame_id) == (len(scan), 16, "velo_link")
        np.testing.assert_array_equal(np.frombuffer(cloud.data.tobytes(), "<f4").reshape(-1, 4), scan)
    calib = read_kitti_calib(kitti_seq / "calib.txt")
    (t_ns, tf), = converted.msgs["/tf_static"]
    assert t_ns == converted.msgs[f"{LEFT}/image_raw"][0][0]
    # the left camera (the frame of the images, which the node's grid hangs off) is the root
    assert [(ts.header.frame_id, ts.child_frame_id) for ts in tf.transforms] == [
        ("camera_color_left", "velo_link"), ("camera_color_left", "camera_color_right")]
    velo, right = (pose_of(ts) for ts in tf.transforms)
    _, cam2_from_velo = kitti_camera(calib, "P2")
    _, cam3_from_velo = kitti_camera(calib, "P3")
    # quaternion + translation round trip gives the calibration back (Tr is orthonormal to ~1e-7, and the quaternion
    # is of the nearest rotation)
    np.testing.assert_allclose(velo[:3, 3], cam2_from_velo[:3, 3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(velo[:3, :3], cam2_from_velo[:3, :3], rtol=0, atol=1e-6)
    # the same transform the node uses by default for the camera -> grid (velodyne) frame
    np.testing.assert_allclose(velo, np.reshape(KITTI_CAM_FROM_GRID, (4, 4)), rtol=0, atol=1e-6)
    # the right camera: 0.54 m to the right (+x of the optical frame), same orientation, as P2/P3 say
    np.testing.assert_allclose(right[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(right[:3, 3], cam2_from_velo[:3, 3] - cam3_from_velo[:3, 3], atol=1e-12)
    assert 0.53 < right[0, 3] < 0.55
    # a velodyne point through the TF chain lands where the calibration puts it, in both cameras
    p = np.array([10.0, 2.0, -1.0, 1.0])
    np.testing.assert_allclose(velo @ p, cam2_from_velo @ p, atol=1e-5)
    np.testing.assert_allclose(np.linalg.solve(right, velo @ p), cam3_from_velo @ p, atol=1e-5)
    info = {t.name: t for t in bag_topics(open_bag(converted.bag))}
    assert info["/tf_static"].transient_local and not info[f"{LEFT}/image_raw"].transient_local


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_version9_jazzy_and_frame_ids(kitti_seq: Path, tmp_path: Path) -> None:
    out = tmp_path / "v9"
    convert_sequence(kitti_seq, out, storage="mcap", version=9, distro="jazzy", frames=[4], tf_static=False,
                     frame_ids=FrameIds("L", "R", "V"), prefix="cam", start_time=100.0)
    assert "version: 9" in (out / "metadata.yaml").read_text()
    msgs = read_all(out)
    assert set(msgs) == {"/cam/camera_color_left/image_raw", "/cam/camera_color_left/camera_info",
                         "/cam/camera_color_right/image_raw", "/cam/camera_color_right/camera_info"}
    (t_ns, img), = msgs["/cam/camera_color_right/image_raw"]
    line = (kitti_seq / "times.txt").read_text().split()[4]
    assert img.header.frame_id == "R" and t_ns == 100 * 10**9 + exact_ns(line)


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_cli(kitti_seq: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main([str(kitti_seq), str(out), "--frames", "0-1", "--storage", "sqlite3", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_all(out)[f"{LEFT}/image_raw"]) == 2
    assert main([str(kitti_seq), str(out), "--frames", "0"]) == 2  # exists already
    assert "exists already" in capsys.readouterr().err
    assert main([str(kitti_seq), str(tmp_path / "x"), "--frames", "5000"]) == 2
    assert "no image_2" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path / "y")]) == 2
    assert "not a KITTI odometry sequence" in capsys.readouterr().err


@pytest.mark.slow  # converts real 1226x370 stereo frames
@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_compressed_images(codec: str, kitti_seq: Path, tmp_path: Path) -> None:
    out = tmp_path / codec
    summary = convert_sequence(kitti_seq, out, frames=[0, 1], image_format=codec, tf_static=False)
    msgs = read_all(out)
    assert set(msgs) == {f"{LEFT}/image_raw/compressed", f"{LEFT}/camera_info", f"{RIGHT}/image_raw/compressed",
                         f"{RIGHT}/camera_info"}
    types = {t.name: t.msgtype for t in bag_topics(open_bag(out))}
    assert types[f"{LEFT}/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
    for side, folder in ((LEFT, "image_2"), (RIGHT, "image_3")):
        for (t_ns, msg), frame in zip(msgs[f"{side}/image_raw/compressed"], [0, 1]):
            assert msg.format == f"rgb8; {codec} compressed bgr8"
            png = cv2.cvtColor(cv2.imread(str(kitti_seq / folder / f"{frame:06d}.png")), cv2.COLOR_BGR2RGB)
            got = compressed_to_rgb(msg)
            if codec == "png":
                np.testing.assert_array_equal(got, png)
            else:
                assert got.shape == png.shape and np.abs(got.astype(int) - png).mean() < 3.0
            assert t_ns == msgs[f"{side}/camera_info"][frame][0]
    print(f"\n{codec}: {summary.bytes / 1e6:.2f} MB for 2 stereo frames")


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_node_params_file_and_start_time_note(kitti_seq: Path, tmp_path: Path, capsys) -> None:
    import yaml

    params_file = tmp_path / "seq08_params.yaml"
    assert main([str(kitti_seq), str(tmp_path / "bag"), "--frames", "0", "--quiet", "--node-params",
                 str(params_file), "--compressed", "jpeg", "--jpeg-quality", "90"]) == 0
    out = capsys.readouterr().out
    assert "sequence 08 was recorded on 2011-09-30" in out and "image_raw/compressed: 1" in out
    params = node_params_from_yaml(yaml.safe_load(params_file.read_text()))
    assert set(params) == {"cam_from_grid"} and validate_values(params) == []
    _, cam2_from_velo = kitti_camera(read_kitti_calib(kitti_seq / "calib.txt"), "P2")
    np.testing.assert_array_equal(np.reshape(params["cam_from_grid"], (4, 4)), cam2_from_velo)
    (_, tf), = read_all(tmp_path / "bag")["/tf_static"]
    np.testing.assert_allclose(pose_of(tf.transforms[0]), cam2_from_velo, atol=1e-6)


def _tiny_sequence(root: Path, name: str, kitti_seq: Path) -> Path:
    seq = root / name
    for folder in ("image_2", "image_3"):
        (seq / folder).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(seq / folder / f"{i:06d}.png"), np.full((24, 32, 3), 40 * i + 10, np.uint8))
    shutil.copy(kitti_seq / "calib.txt", seq / "calib.txt")
    (seq / "times.txt").write_text("0.000000e+00\n1.039920e-01\n")
    return seq


@pytest.mark.parametrize("name, start", [
    ("00", datetime.datetime(2011, 10, 3, 12, tzinfo=datetime.timezone.utc)),
    ("03", datetime.datetime(2011, 9, 26, 12, tzinfo=datetime.timezone.utc)),
    ("15", datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)),
])
def test_each_sequence_gets_its_own_date(name, start, kitti_seq: Path, tmp_path: Path) -> None:
    seq = _tiny_sequence(tmp_path, name, kitti_seq)
    summary = convert_sequence(seq, tmp_path / "bag", tf_static=False)
    start_ns = int(start.timestamp()) * 10**9
    assert summary.start_ns == start_ns
    stamps = [t for t, _ in read_all(tmp_path / "bag")[f"{LEFT}/image_raw"]]
    assert stamps == [start_ns, start_ns + 103_992_000]
    # --start-time as text keeps every digit
    convert_sequence(seq, tmp_path / "given", tf_static=False, start_time="1300000000.000000001")
    assert [t for t, _ in read_all(tmp_path / "given")[f"{LEFT}/image_raw"]] == [
        1_300_000_000_000_000_001, 1_300_000_000_103_992_001]


def test_bad_conversion_options(kitti_seq: Path, tmp_path: Path) -> None:
    seq = _tiny_sequence(tmp_path, "08", kitti_seq)
    for kwargs, needle in ((dict(image_format="tiff"), "image format"), (dict(jpeg_quality=101), "jpeg quality"),
                           (dict(jpeg_subsampling="411"), "subsampling"), (dict(start_time="noon"), "start time"),
                           (dict(start_time=-5), "outside the range"), (dict(start_time=2**31), "outside the range")):
        with pytest.raises(KittiBagError, match=needle):
            convert_sequence(seq, tmp_path / "bag", **kwargs)
        assert not (tmp_path / "bag").exists()


def test_parse_frames() -> None:
    assert parse_frames("0-3") == [0, 1, 2, 3]
    assert parse_frames("5, 0-1,1") == [0, 1, 5]
    for bad in ("3-1", "a", "-2", "", "1-b"):
        with pytest.raises(KittiBagError):
            parse_frames(bad)


# ------------------------------------------------------------------------------------------------ bad bags
@pytest.fixture(scope="module")
def small_bags(kitti_seq: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    for storage in ("mcap", "sqlite3"):
        convert_sequence(kitti_seq, root / storage, storage=storage, frames=[0, 1], tf_static=False)
    return root


def _corrupt_variants(small_bags: Path, tmp_path: Path):
    import shutil

    mcap = tmp_path / "truncated_mcap"
    shutil.copytree(small_bags / "mcap", mcap)
    f = next(mcap.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    db = tmp_path / "garbage_db3"
    shutil.copytree(small_bags / "sqlite3", db)
    f = next(db.glob("*.db3"))
    f.write_bytes(b"this is not a database" * 100)
    meta = tmp_path / "no_metadata"
    shutil.copytree(small_bags / "mcap", meta)
    (meta / "metadata.yaml").unlink()
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    return [mcap, db, meta, empty, tmp_path / "missing"]


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_corrupt_bags_raise_bag_error(small_bags: Path, tmp_path: Path) -> None:
    for bad in _corrupt_variants(small_bags, tmp_path):
        with pytest.raises(BagError):
            reader = open_bag(bad)
            for _ in iter_raw(reader, [t.name for t in bag_topics(reader)]):
                pass


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_play_cli_reports_corrupt_bag_without_traceback(small_bags: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for bad in _corrupt_variants(small_bags, tmp_path)[:2]:
        proc = subprocess.run([sys.executable, "-m", "scanssc_ros.bag.play", str(bad)], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "scanssc-play: error:" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # converts real 1226x370 stereo frames
def test_good_bag_reads_raw_cdr(small_bags: Path) -> None:
    reader = open_bag(small_bags / "sqlite3")
    topics = {t.name: t for t in bag_topics(reader)}
    assert topics[f"{LEFT}/image_raw"].msgtype == "sensor_msgs/msg/Image" and topics[f"{LEFT}/image_raw"].count == 2
    raws = list(iter_raw(reader, [f"{LEFT}/image_raw"]))
    assert [t for t, _, _ in raws] == [f"{LEFT}/image_raw"] * 2
    ts = get_typestore(Stores.LATEST)
    assert ts.deserialize_cdr(raws[0][2], "sensor_msgs/msg/Image").encoding == "rgb8"


# ------------------------------------------------------------------------------------------------- schedule
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.t += dt


@pytest.mark.parametrize("rate", [1.0, 2.5, 0.5])
def test_schedule_follows_recorded_times(rate: float) -> None:
    clock = FakeClock()
    t0 = 5 * 10**9
    offsets = [0.0, 0.1, 0.1, 0.35, 1.0]
    msgs = [(f"/t{i % 2}", t0 + int(o * 1e9), bytes([i])) for i, o in enumerate(offsets)]
    sent = []
    ticks = []
    stats = play_messages(msgs, lambda topic, raw: sent.append((clock.t, topic, raw)), rate=rate,
                          clock=ticks.append, clock_hz=20.0, now=clock.now, sleep=clock.sleep)
    assert [raw for _, _, raw in sent] == [bytes([i]) for i in range(5)]
    np.testing.assert_allclose([t - 1000.0 for t, _, _ in sent], np.array(offsets) / rate, atol=1e-9)
    assert stats.published == {"/t0": 3, "/t1": 2}
    # /clock: every 1/20 s of wall time, carrying bag time, monotonic, within the bag
    assert stats.clock_ticks == len(ticks) == int(np.floor(1.0 / rate * 20 + 1e-9)) + 1
    np.testing.assert_allclose(np.diff(ticks), rate / 20 * 1e9, atol=2)
    assert ticks[0] == t0 and ticks[-1] <= t0 + 1e9


def test_schedule_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        play_messages([], lambda *a: None, rate=0.0)
    assert play_messages([], lambda *a: None) == PlayStats()

