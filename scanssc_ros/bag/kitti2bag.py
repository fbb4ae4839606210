"""KITTI odometry / SemanticKITTI sequence -> rosbag2, with rosbags only (no ROS installation needed).

    scanssc-kitti2bag SEQUENCE_DIR OUT_BAG [--storage mcap|sqlite3] [--version 8|9] [--distro humble|jazzy|kilted]
                      [--frames 0-9] [--compressed jpeg|png [--jpeg-quality 95] [--jpeg-subsampling 444]]
                      [--velodyne] [--clock] [--no-tf-static]
                      [--start-time SEC] [--node-params FILE]

SEQUENCE_DIR is ``.../sequences/XX`` with ``image_2/``, ``image_3/``, ``calib.txt``, ``times.txt`` and optionally
``velodyne/``. Written topics (``--prefix`` replaces ``/kitti``):

- ``/kitti/camera_color_{left,right}/image_raw``: sensor_msgs/Image, rgb8 (KITTI images are rectified). With
  ``--compressed jpeg|png`` instead ``.../image_raw/compressed``: sensor_msgs/CompressedImage, format
  ``"rgb8; jpeg compressed bgr8"`` (or ``png``), as image_transport's compressed publisher writes it. JPEG keeps
  full colour resolution (4:4:4) unless ``--jpeg-subsampling`` says otherwise.
- ``/kitti/camera_color_{left,right}/camera_info``: CameraInfo with the real P2 / P3 (including the 4th column, the
  offset from the reference camera), K = P[:3, :3], R = I, D = 5 zeros, ``plumb_bob``.
- ``/kitti/velo/pointcloud`` (``--velodyne``): PointCloud2 with x, y, z, intensity float32 (the .bin layout).
- ``/clock`` (``--clock``): rosgraph_msgs/Clock at every frame time.
- ``/tf_static`` (default on), transient-local, from calib.txt: ``camera_color_left`` -> ``velo_link`` (the pose of
  the velodyne in the left colour camera's optical frame, ``shift(P2) @ Tr``: the node's ``cam_from_grid``
  convention, the SemanticKITTI grid being the velodyne frame) and ``camera_color_left`` -> ``camera_color_right``.
  The left camera is the root because the node hangs its grid frame off the camera frame of its images.

Stamps are integer nanoseconds: the sequence's start plus each times.txt entry, parsed as a decimal string (no
binary floating point, so no rounding drift). The start is the sequence's recording date at 12:00:00 UTC for the
odometry sequences whose raw drive is published (00-10, see ``KITTI_ODOMETRY_DATES``); the time of day is not in
the odometry release, so noon is a placeholder. Other sequences (11-21, whose drives KITTI does not name, and any
other folder name) start at ``UNKNOWN_DATE_START`` (2000-01-01 00:00:00 UTC), an obvious placeholder. ``--start-time``
overrides both. The bag's receive times equal the header stamps, so two conversions give identical bags.

Defaults: MCAP storage and metadata version 8. Version 8 is what Iron wrote and what Jazzy/Kilted still read; a
version-9 bag cannot be played by an older rosbag2 (ros2/rosbag2#1895) and 9 adds nothing these topics need. For
Humble without the MCAP plugin use ``--storage sqlite3`` (readability of v8 metadata by Humble's rosbag2 is
inferred, not verified here).
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from scanssc_ros.geometry import kitti_camera, read_kitti_calib, rotation_to_quaternion

DISTROS = ("humble", "jazzy", "kilted")
STORAGES = ("mcap", "sqlite3")
IMAGE_FORMATS = ("raw", "jpeg", "png")
JPEG_SUBSAMPLING = ("444", "422", "420")
NS = 1_000_000_000
# Recording day of each odometry sequence, from the KITTI odometry devkit's table of the raw drive each one was cut
# from (drives are named YYYY_MM_DD_drive_NNNN): 00 2011_10_03_drive_0027, 01 _0042, 02 _0034 (10-03);
# 03 2011_09_26_drive_0067; 04 2011_09_30_drive_0016, 05 _0018, 06 _0020, 07 _0027, 08 _0028 (from its frame
# 1100), 09 _0033, 10 _0034 (09-30). Sequences 11-21 are the benchmark's test set and their drives are not named.
KITTI_ODOMETRY_DATES = {
    "00": datetime.date(2011, 10, 3), "01": datetime.date(2011, 10, 3), "02": datetime.date(2011, 10, 3),
    "03": datetime.date(2011, 9, 26),
    **{f"{i:02d}": datetime.date(2011, 9, 30) for i in range(4, 11)},
}
UNKNOWN_DATE_START = 946_684_800  # s: 2000-01-01 00:00:00 UTC, a placeholder no KITTI drive can be mistaken for
DEFAULT_START_TIME = 1_317_384_000  # s: sequence 08's start, 2011-09-30 12:00:00 UTC


class KittiBagError(RuntimeError):
    """The sequence directory or the arguments cannot give a valid bag."""


@dataclass(frozen=True)
class FrameIds:
    left: str = "camera_color_left"
    right: str = "camera_color_right"
    velo: str = "velo_link"


@dataclass
class ConversionSummary:
    bag: Path
    frames: List[int]
    counts: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    bytes: int = 0
    start_ns: int = 0  # the stamp of times.txt's 0
    start_note: str = ""  # where start_ns came from


def parse_frames(spec: str) -> List[int]:
    """'0-9' / '3' / '0-4,8,10-12' -> sorted unique frame numbers (ranges inclusive)."""
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi or lo < 0:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                out.add(value)
        except ValueError:
            raise KittiBagError(f"bad frame range {part!r} (use e.g. 0-9 or 0-4,8)") from None
    if not out:
        raise KittiBagError(f"frame range {spec!r} selects no frames")
    return sorted(out)


def seconds_to_ns(value: Union[str, int, float, Decimal]) -> int:
    """A time in seconds given as a decimal string (or number) -> integer nanoseconds, rounded half-to-even only
    beyond the 9th decimal. Floats go through their shortest decimal form, so 0.1 is 100000000 ns exactly."""
    try:
        dec = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError(f"could not convert string {str(value).strip()!r} to a time in seconds") from None
    if not dec.is_finite():
        raise ValueError(f"{value!r} is not a finite time in seconds")
    return int((dec * NS).to_integral_value(rounding=ROUND_HALF_EVEN))


def read_times_ns(path: Path) -> List[int]:
    """times.txt -> one integer-nanosecond offset per frame, parsed from the decimal text (KITTI writes e.g.
    ``1.039920e-01``); blank lines are skipped."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if len(text.split()) != 1:
            raise ValueError(f"{path}: expected one finite time in seconds per line (line {lineno}: {text!r})")
        try:
            out.append(seconds_to_ns(text))
        except ValueError as exc:
            message = str(exc) if "could not convert" in str(exc) else "expected one finite time in seconds per line"
            raise ValueError(f"{path}: {message} (line {lineno})") from None
    return out


def sequence_start(sequence: str) -> Tuple[int, str]:
    """(stamp of times.txt's 0 in ns, how it was chosen) for a sequence folder name such as '08'."""
    date = KITTI_ODOMETRY_DATES.get(sequence)
    if date is None:
        when = datetime.datetime.fromtimestamp(UNKNOWN_DATE_START, datetime.timezone.utc)
        return UNKNOWN_DATE_START * NS, (f"recording date of sequence {sequence!r} unknown: placeholder start "
                                         f"{when:%Y-%m-%d %H:%M:%S} UTC (--start-time to choose)")
    noon = datetime.datetime(date.year, date.month, date.day, 12, tzinfo=datetime.timezone.utc)
    return int(noon.timestamp()) * NS, (f"sequence {sequence} was recorded on {date:%Y-%m-%d}; stamps start at "
                                        "12:00:00 UTC that day (the time of day is not in the odometry data)")


def _stamp(ns: int) -> Tuple[int, int, int]:
    if not 0 <= ns < 2**31 * NS:  # builtin_interfaces/Time holds int32 seconds
        raise KittiBagError(f"stamp {ns} ns is outside the range of builtin_interfaces/Time")
    return ns // NS, ns % NS, ns


def _read_bgr(path: Path) -> np.ndarray:
    import cv2  # only the image reading needs OpenCV

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise KittiBagError(f"cannot read image {path}")
    return bgr


def _jpeg_params(quality: int, subsampling: str) -> List[int]:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    factor = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{subsampling}", None)
    if factor is None or not hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        if subsampling != "420":  # 4:2:0 is what OpenCV writes when it cannot be told otherwise
            raise KittiBagError(f"this OpenCV ({cv2.__version__}) cannot set JPEG chroma subsampling "
                                f"{subsampling}; use 420")
        return params
    return params + [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]


def _encode(bgr: np.ndarray, codec: str, jpeg_params: List[int], png_level: int) -> np.ndarray:
    import cv2

    # OpenCV encodes BGR pixels, which image_transport's format string records as "compressed bgr8"
    ext, params = (".jpg", jpeg_params) if codec == "jpeg" else (".png", [cv2.IMWRITE_PNG_COMPRESSION, png_level])
    ok, data = cv2.imencode(ext, bgr, params)
    if not ok:
        raise KittiBagError(f"OpenCV could not encode a {bgr.shape[1]}x{bgr.shape[0]} image as {codec}")
    return data.reshape(-1)


def _read_input(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)`` with any parse or I/O error turned into one KittiBagError line that names the file."""
    try:
        return read(path)
    except (ValueError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KittiBagError(text if str(path) in text else f"{path}: {text}") from None


@contextmanager
def _removed_on_failure(out_bag: Path) -> Iterator[None]:
    """Delete the bag being written when an error or Ctrl-C cuts it short: a partial bag reads like a complete
    one, and a rerun would refuse the existing directory."""
    try:
        yield
    except BaseException:
        shutil.rmtree(out_bag, ignore_errors=True)
        raise


def _available_frames(seq: Path) -> List[int]:
    return sorted(int(p.stem) for p in (seq / "image_2").glob("*.png") if p.stem.isdigit())


def static_transforms(calib: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """calib.txt -> {child: 4x4 pose of the child in the left colour camera's optical frame} for 'velo' and
    'right'. A pose maps child coordinates into the parent's, as a TF transform does."""
    _, cam2_from_velo = kitti_camera(calib, "P2")
    _, cam3_from_velo = kitti_camera(calib, "P3")
    return {"velo": cam2_from_velo, "right": cam2_from_velo @ np.linalg.inv(cam3_from_velo)}


def node_params_yaml(calib: Dict[str, np.ndarray]) -> str:
    """A ROS 2 params file that gives scanssc_node this sequence's camera <- velodyne (grid) transform."""
    # positional floats with a dot: rcl's YAML parser refuses a list mixing integers and doubles, and PyYAML
    # reads 1e-05 as a string
    values = ", ".join(np.format_float_positional(float(v), unique=True, trim="0")
                       for v in static_transforms(calib)["velo"].reshape(-1))
    return ("# scanssc_node's cam_from_grid for this sequence (velodyne -> left colour camera, from calib.txt),\n"
            "# written by scanssc-kitti2bag. Give it after the main params file:\n"
            "#   --params-file config/scanssc.yaml --params-file <this file>\n"
            f"/**:\n  ros__parameters:\n    cam_from_grid: [{values}]\n")


def convert_sequence(seq_dir: Path, out_bag: Path, *, storage: str = "mcap", version: int = 8,
                     distro: str = "humble", frames: Optional[Sequence[int]] = None, velodyne: bool = False,
                     clock: bool = False, tf_static: bool = True,
                     start_time: Optional[Union[str, int, float, Decimal]] = None, image_format: str = "raw",
                     jpeg_quality: int = 95, jpeg_subsampling: str = "444", png_level: int = 3,
                     frame_ids: FrameIds = FrameIds(),
                     prefix: str = "/kitti", progress: bool = False) -> ConversionSummary:
    """Write the selected frames of one sequence into a new rosbag2 directory ``out_bag``.

    ``start_time``: the stamp of times.txt's 0 in seconds (a decimal string keeps every digit); None picks it
    from the sequence folder's name (:func:`sequence_start`). ``image_format`` jpeg/png writes CompressedImages;
    JPEG keeps full colour resolution by default (``jpeg_subsampling`` 444): KITTI's colour images carry
    pixel-level chroma detail, and OpenCV's usual 4:2:0 costs more than the quality setting does."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    seq_dir, out_bag = Path(seq_dir), Path(out_bag)
    if storage not in STORAGES:
        raise KittiBagError(f"storage {storage!r} not in {STORAGES}")
    if version not in (8, 9):
        raise KittiBagError(f"metadata version {version} not supported (8 or 9)")
    if distro not in DISTROS:
        raise KittiBagError(f"distro {distro!r} not in {DISTROS}")
    if image_format not in IMAGE_FORMATS:
        raise KittiBagError(f"image format {image_format!r} not in {IMAGE_FORMATS}")
    if not 0 <= jpeg_quality <= 100 or not 0 <= png_level <= 9:
        raise KittiBagError(f"jpeg quality {jpeg_quality} (0-100) or png level {png_level} (0-9) out of range")
    if jpeg_subsampling not in JPEG_SUBSAMPLING:
        raise KittiBagError(f"jpeg subsampling {jpeg_subsampling!r} not in {JPEG_SUBSAMPLING}")
    jpeg_params = _jpeg_params(jpeg_quality, jpeg_subsampling) if image_format == "jpeg" else []
    for needed in ("calib.txt", "times.txt", "image_2", "image_3"):
        if not (seq_dir / needed).exists():
            raise KittiBagError(f"{seq_dir} is not a KITTI odometry sequence: {needed} missing")
    if out_bag.exists():
        raise KittiBagError(f"{out_bag} exists already; choose a new output directory")

    calib = _read_input(seq_dir / "calib.txt", read_kitti_calib)
    if "P3" not in calib:
        raise KittiBagError(f"{seq_dir / 'calib.txt'}: P3 missing")
    times = _read_input(seq_dir / "times.txt", read_times_ns)
    if start_time is None:
        start_ns, start_note = sequence_start(seq_dir.name)
    else:
        try:
            start_ns = seconds_to_ns(start_time)
        except ValueError as exc:
            raise KittiBagError(f"start time: {exc}") from None
        start_note = f"stamps start at {start_time} s (given)"
    available = set(_available_frames(seq_dir))
    wanted = sorted(available) if frames is None else sorted(set(int(f) for f in frames))
    missing = [f for f in wanted if f not in available or f >= len(times)]
    if missing:
        raise KittiBagError(f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} have no image_2 png or no "
                            f"times.txt entry ({len(available)} images, {len(times)} times)")
    if not wanted:
        raise KittiBagError(f"{seq_dir / 'image_2'} has no images")
    if velodyne:
        no_scan = [f for f in wanted if not (seq_dir / "velodyne" / f"{f:06d}.bin").is_file()]
        if no_scan:
            raise KittiBagError(f"--velodyne: frames {no_scan[:5]} have no velodyne/*.bin")
    for f in (wanted[0], wanted[-1]):
        _stamp(start_ns + times[f])  # out-of-range stamps fail before anything is written

    ts = get_typestore({"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY,
                        "kilted": Stores.ROS2_KILTED}[distro])
    T = ts.types
    Image, CameraInfo, Header, Time = (T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"],
                                       T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"])
    ROI, PointCloud2, PointField = (T["sensor_msgs/msg/RegionOfInterest"], T["sensor_msgs/msg/PointCloud2"],
                                    T["sensor_msgs/msg/PointField"])
    CompressedImage = T["sensor_msgs/msg/CompressedImage"]

    zero = QosTime(sec=0, nsec=0)  # "unspecified": the player uses its defaults

    def qos(durability: QosDurability, depth: int) -> Qos:
        return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
                   durability=durability, deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
                   liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)

    sensor_qos = [qos(QosDurability.VOLATILE, 10)]
    # (projection key, image folder, frame id, topic namespace)
    cams = [("P2", "image_2", frame_ids.left, "camera_color_left"),
            ("P3", "image_3", frame_ids.right, "camera_color_right")]
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    image_suffix = "image_raw" if image_format == "raw" else "image_raw/compressed"
    summary = ConversionSummary(bag=out_bag, frames=wanted, start_ns=start_ns, start_note=start_note)
    t_start = time.perf_counter()

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with _removed_on_failure(out_bag), Writer(out_bag, version=version, storage_plugin=plugin) as writer:
        conns = {}

        def connect(topic: str, msgtype: str, profiles: List[Qos]) -> None:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=profiles)
            summary.counts[topic] = 0

        def write(topic: str, t_ns: int, msg) -> None:
            writer.write(conns[topic], t_ns, ts.serialize_cdr(msg, msg.__msgtype__))
            summary.counts[topic] += 1

        for _, _, _, name in cams:
            connect(f"{prefix}/{name}/{image_suffix}",
                    (Image if image_format == "raw" else CompressedImage).__msgtype__, sensor_qos)
            connect(f"{prefix}/{name}/camera_info", CameraInfo.__msgtype__, sensor_qos)
        if velodyne:
            connect(f"{prefix}/velo/pointcloud", PointCloud2.__msgtype__, sensor_qos)
        if clock:
            connect("/clock", "rosgraph_msgs/msg/Clock", [qos(QosDurability.VOLATILE, 1)])

        if tf_static:
            connect("/tf_static", "tf2_msgs/msg/TFMessage", [qos(QosDurability.TRANSIENT_LOCAL, 1)])
            sec, nsec, t_ns = _stamp(start_ns + times[wanted[0]])
            poses = static_transforms(calib)
            transforms = [_transform_stamped(T, frame_ids.left, frame_ids.velo, poses["velo"], sec, nsec),
                          _transform_stamped(T, frame_ids.left, frame_ids.right, poses["right"], sec, nsec)]
            write("/tf_static", t_ns, T["tf2_msgs/msg/TFMessage"](transforms=transforms))

        iterator = wanted
        if progress:
            from tqdm import tqdm

            iterator = tqdm(wanted, desc=f"{seq_dir.name} -> {out_bag.name}", unit="frame")
        for frame in iterator:
            sec, nsec, t_ns = _stamp(start_ns + times[frame])
            stamp = Time(sec=sec, nanosec=nsec)
            if clock:
                write("/clock", t_ns, T["rosgraph_msgs/msg/Clock"](clock=stamp))
            for pkey, folder, frame_id, name in cams:
                bgr = _read_bgr(seq_dir / folder / f"{frame:06d}.png")
                h, w = bgr.shape[:2]
                header = Header(stamp=stamp, frame_id=frame_id)
                P = np.asarray(calib[pkey], np.float64)
                if image_format == "raw":
                    msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                                data=np.ascontiguousarray(bgr[:, :, ::-1]).reshape(-1))
                else:
                    msg = CompressedImage(header=header, format=f"rgb8; {image_format} compressed bgr8",
                                          data=_encode(bgr, image_format, jpeg_params, png_level))
                write(f"{prefix}/{name}/{image_suffix}", t_ns, msg)
                write(f"{prefix}/{name}/camera_info", t_ns,
                      CameraInfo(header=header, height=h, width=w, distortion_model="plumb_bob",
                                 d=np.zeros(5), k=P[:, :3].reshape(-1).copy(), r=np.eye(3).reshape(-1),
                                 p=P.reshape(-1).copy(), binning_x=0, binning_y=0,
                                 roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
            if velodyne:
                scan = np.fromfile(seq_dir / "velodyne" / f"{frame:06d}.bin", dtype="<f4")
                if scan.size % 4:
                    raise KittiBagError(f"velodyne/{frame:06d}.bin is not a multiple of 4 float32")
                n = scan.size // 4
                fields = [PointField(name=nm, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                          for i, nm in enumerate(("x", "y", "z", "intensity"))]
                write(f"{prefix}/velo/pointcloud", t_ns,
                      PointCloud2(header=Header(stamp=stamp, frame_id=frame_ids.velo), height=1, width=n,
                                  fields=fields, is_bigendian=False, point_step=16, row_step=16 * n,
                                  data=scan.view(np.uint8), is_dense=True))

    summary.seconds = time.perf_counter() - t_start
    summary.bytes = sum(p.stat().st_size for p in out_bag.rglob("*") if p.is_file())
    return summary


def _transform_stamped(T, parent: str, child: str, M: np.ndarray, sec: int, nsec: int):
    qx, qy, qz, qw = rotation_to_quaternion(M[:3, :3])
    return T["geometry_msgs/msg/TransformStamped"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                        frame_id=parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(M[0, 3]), y=float(M[1, 3]), z=float(M[2, 3])),
            rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scanssc-kitti2bag",
                                description="Convert a KITTI odometry / SemanticKITTI sequence to a rosbag2.")
    p.add_argument("sequence", type=Path, help="sequence directory (.../sequences/XX)")
    p.add_argument("output", type=Path, help="bag directory to create (must not exist)")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="storage plugin (default mcap)")
    p.add_argument("--version", type=int, choices=(8, 9), default=8,
                   help="metadata.yaml version (default 8: readable by Iron and newer; 9 needs Jazzy+)")
    p.add_argument("--distro", choices=DISTROS, default="humble",
                   help="message definitions stored in the bag (default humble)")
    p.add_argument("--frames", default=None, help="frames to convert, e.g. 0-9 or 0-4,8 (default: all images)")
    p.add_argument("--compressed", choices=("jpeg", "png"), default=None,
                   help="write sensor_msgs/CompressedImage on .../image_raw/compressed instead of raw images")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 0-100 (default 95)")
    p.add_argument("--jpeg-subsampling", choices=JPEG_SUBSAMPLING, default="444",
                   help="JPEG chroma subsampling (default 444: full colour resolution; 420 is OpenCV's and "
                        "image_transport's usual)")
    p.add_argument("--png-level", type=int, default=3, help="PNG compression level 0-9 (default 3)")
    p.add_argument("--velodyne", action="store_true", help="also write /velo/pointcloud from velodyne/*.bin")
    p.add_argument("--clock", action="store_true", help="also write /clock at every frame time")
    p.add_argument("--no-tf-static", dest="tf_static", action="store_false",
                   help="do not write /tf_static (left camera -> velodyne, left -> right camera)")
    p.add_argument("--start-time", default=None, metavar="SEC",
                   help="stamp of times.txt's 0 in seconds since the epoch, decimal (default: the sequence's "
                        "recording date at 12:00 UTC for 00-10, 2000-01-01 00:00 UTC otherwise)")
    p.add_argument("--node-params", type=Path, default=None, metavar="FILE",
                   help="also write a params file with this sequence's cam_from_grid for scanssc_node")
    p.add_argument("--prefix", default="/kitti", help="topic prefix (default /kitti)")
    p.add_argument("--left-frame", default=FrameIds.left)
    p.add_argument("--right-frame", default=FrameIds.right)
    p.add_argument("--velo-frame", default=FrameIds.velo)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        frames = parse_frames(args.frames) if args.frames else None
        summary = convert_sequence(
            args.sequence, args.output, storage=args.storage, version=args.version, distro=args.distro,
            frames=frames, velodyne=args.velodyne, clock=args.clock, tf_static=args.tf_static,
            start_time=args.start_time, image_format=args.compressed or "raw", jpeg_quality=args.jpeg_quality,
            jpeg_subsampling=args.jpeg_subsampling, png_level=args.png_level,
            frame_ids=FrameIds(args.left_frame, args.right_frame, args.velo_frame),
            prefix=args.prefix, progress=not args.quiet)
        if args.node_params is not None:
            calib = _read_input(args.sequence / "calib.txt", read_kitti_calib)
            args.node_params.write_text(node_params_yaml(calib))
    except (KittiBagError, ValueError, OSError) as exc:
        print(f"scanssc-kitti2bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.bag} ({args.storage}, v{args.version}): {len(summary.frames)} frames, "
          f"{sum(summary.counts.values())} messages, {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s")
    print(f"  {summary.start_note}")
    for topic, n in summary.counts.items():
        print(f"  {topic}: {n}")
    if args.node_params is not None:
        print(f"  cam_from_grid for scanssc_node: {args.node_params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
