"""KITTI odometry / SemanticKITTI sequence -> rosbag2, with rosbags only (no ROS installation needed).

    scanssc-kitti2bag SEQUENCE_DIR OUT_BAG [--storage mcap|sqlite3] [--version 8|9] [--distro humble|jazzy|kilted]
                      [--frames 0-9] [--velodyne] [--clock] [--no-tf-static] [--start-time SEC]

SEQUENCE_DIR is ``.../sequences/XX`` with ``image_2/``, ``image_3/``, ``calib.txt``, ``times.txt`` and optionally
``velodyne/``. Written topics (``--prefix`` replaces ``/kitti``):

- ``/kitti/camera_color_{left,right}/image_raw``: sensor_msgs/Image, rgb8 (KITTI images are rectified).
- ``/kitti/camera_color_{left,right}/camera_info``: CameraInfo with the real P2 / P3 (including the 4th column, the
  offset from the reference camera), K = P[:3, :3], R = I, D = 5 zeros, ``plumb_bob``.
- ``/kitti/velo/pointcloud`` (``--velodyne``): PointCloud2 with x, y, z, intensity float32 (the .bin layout).
- ``/clock`` (``--clock``): rosgraph_msgs/Clock at every frame time.
- ``/tf_static`` (default on): velo -> each camera from ``Tr`` and P2/P3, published transient-local.

Stamps are ``--start-time`` (a fixed epoch by default, so two conversions give identical bags) plus times.txt;
the bag's receive times equal the header stamps. Defaults: MCAP storage and metadata version 8. Version 8 is what
Iron wrote and what Jazzy/Kilted still read; a version-9 bag cannot be played by an older rosbag2
(ros2/rosbag2#1895) and 9 adds nothing these topics need. For Humble without the MCAP plugin use ``--storage
sqlite3`` (readability of v8 metadata by Humble's rosbag2 is inferred, not verified here).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from scanssc_ros.geometry import kitti_camera, read_kitti_calib, rotation_to_quaternion

DISTROS = ("humble", "jazzy", "kilted")
STORAGES = ("mcap", "sqlite3")
DEFAULT_START_TIME = 1_317_384_000.0  # 2011-09-30 12:00:00 UTC, the day KITTI odometry 08 was recorded


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


def _stamp(seconds: float):
    ns = int(round(seconds * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000, ns


def _read_rgb(path: Path) -> np.ndarray:
    import cv2  # only the image reading needs OpenCV

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise KittiBagError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


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


def convert_sequence(seq_dir: Path, out_bag: Path, *, storage: str = "mcap", version: int = 8,
                     distro: str = "humble", frames: Optional[Sequence[int]] = None, velodyne: bool = False,
                     clock: bool = False, tf_static: bool = True, start_time: float = DEFAULT_START_TIME,
                     frame_ids: FrameIds = FrameIds(), prefix: str = "/kitti", progress: bool = False
                     ) -> ConversionSummary:
    """Write the selected frames of one sequence into a new rosbag2 directory ``out_bag``."""
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
    for needed in ("calib.txt", "times.txt", "image_2", "image_3"):
        if not (seq_dir / needed).exists():
            raise KittiBagError(f"{seq_dir} is not a KITTI odometry sequence: {needed} missing")
    if out_bag.exists():
        raise KittiBagError(f"{out_bag} exists already; choose a new output directory")

    calib = _read_input(seq_dir / "calib.txt", read_kitti_calib)
    if "P3" not in calib:
        raise KittiBagError(f"{seq_dir / 'calib.txt'}: P3 missing")
    times = _read_input(seq_dir / "times.txt", lambda p: np.loadtxt(p, dtype=np.float64, ndmin=1))
    if times.ndim != 1 or not np.all(np.isfinite(times)):
        raise KittiBagError(f"{seq_dir / 'times.txt'}: expected one finite time in seconds per line")
    available = set(_available_frames(seq_dir))
    wanted = sorted(available) if frames is None else sorted(set(int(f) for f in frames))
    missing = [f for f in wanted if f not in available or f >= times.size]
    if missing:
        raise KittiBagError(f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} have no image_2 png or no "
                            f"times.txt entry ({len(available)} images, {times.size} times)")
    if not wanted:
        raise KittiBagError(f"{seq_dir / 'image_2'} has no images")
    if velodyne:
        no_scan = [f for f in wanted if not (seq_dir / "velodyne" / f"{f:06d}.bin").is_file()]
        if no_scan:
            raise KittiBagError(f"--velodyne: frames {no_scan[:5]} have no velodyne/*.bin")

    ts = get_typestore({"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY,
                        "kilted": Stores.ROS2_KILTED}[distro])
    T = ts.types
    Image, CameraInfo, Header, Time = (T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"],
                                       T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"])
    ROI, PointCloud2, PointField = (T["sensor_msgs/msg/RegionOfInterest"], T["sensor_msgs/msg/PointCloud2"],
                                    T["sensor_msgs/msg/PointField"])

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
    summary = ConversionSummary(bag=out_bag, frames=wanted)
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
            connect(f"{prefix}/{name}/image_raw", Image.__msgtype__, sensor_qos)
            connect(f"{prefix}/{name}/camera_info", CameraInfo.__msgtype__, sensor_qos)
        if velodyne:
            connect(f"{prefix}/velo/pointcloud", PointCloud2.__msgtype__, sensor_qos)
        if clock:
            connect("/clock", "rosgraph_msgs/msg/Clock", [qos(QosDurability.VOLATILE, 1)])

        first_s = start_time + float(times[wanted[0]])
        if tf_static:
            connect("/tf_static", "tf2_msgs/msg/TFMessage", [qos(QosDurability.TRANSIENT_LOCAL, 1)])
            sec, nsec, t_ns = _stamp(first_s)
            transforms = []
            for pkey, _, frame, _ in cams:
                _, T_cam_velo = kitti_camera(calib, pkey)
                T_velo_cam = np.linalg.inv(T_cam_velo)  # TF maps child (camera) coordinates into the parent (velo)
                transforms.append(_transform_stamped(T, frame_ids.velo, frame, T_velo_cam, sec, nsec))
            write("/tf_static", t_ns, T["tf2_msgs/msg/TFMessage"](transforms=transforms))

        iterator = wanted
        if progress:
            from tqdm import tqdm

            iterator = tqdm(wanted, desc=f"{seq_dir.name} -> {out_bag.name}", unit="frame")
        for frame in iterator:
            sec, nsec, t_ns = _stamp(start_time + float(times[frame]))
            stamp = Time(sec=sec, nanosec=nsec)
            if clock:
                write("/clock", t_ns, T["rosgraph_msgs/msg/Clock"](clock=stamp))
            for pkey, folder, frame_id, name in cams:
                rgb = _read_rgb(seq_dir / folder / f"{frame:06d}.png")
                h, w = rgb.shape[:2]
                header = Header(stamp=stamp, frame_id=frame_id)
                P = np.asarray(calib[pkey], np.float64)
                write(f"{prefix}/{name}/image_raw", t_ns,
                      Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                            data=rgb.reshape(-1)))
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
    p.add_argument("--velodyne", action="store_true", help="also write /velo/pointcloud from velodyne/*.bin")
    p.add_argument("--clock", action="store_true", help="also write /clock at every frame time")
    p.add_argument("--no-tf-static", dest="tf_static", action="store_false",
                   help="do not write /tf_static (velo -> cameras)")
    p.add_argument("--start-time", type=float, default=DEFAULT_START_TIME,
                   help=f"stamp of times.txt's 0, seconds since the epoch (default {DEFAULT_START_TIME:.0f})")
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
            start_time=args.start_time, frame_ids=FrameIds(args.left_frame, args.right_frame, args.velo_frame),
            prefix=args.prefix, progress=not args.quiet)
    except (KittiBagError, ValueError, OSError) as exc:
        print(f"scanssc-kitti2bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.bag} ({args.storage}, v{args.version}): {len(summary.frames)} frames, "
          f"{sum(summary.counts.values())} messages, {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s")
    for topic, n in summary.counts.items():
        print(f"  {topic}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
