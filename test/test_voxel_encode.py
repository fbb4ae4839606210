"""Voxel -> PointCloud2 / MarkerArray / diagnostics encoders against per-voxel reference loops."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("visualization_msgs.msg")

from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from scanssc_ros.geometry import GridSpec, quaternion_to_rotation  # noqa: E402
from scanssc_ros.labels import SEMANTIC_KITTI  # noqa: E402
from scanssc_ros.ros.voxel_encode import (  # noqa: E402
    DIAG_ERROR,
    DIAG_OK,
    DIAG_WARN,
    PointCache,
    diagnostics_message,
    select_voxels,
    to_marker_array,
    to_pointcloud2,
)

# exact binary fractions, so reference and vectorised distances tie exactly where they should
GRID = GridSpec(origin=(-2.0, -3.0, -1.0), voxel_size=0.5, dims=(9, 7, 5))
COLORS = SEMANTIC_KITTI.color_table()
NAMES = SEMANTIC_KITTI.classes


def random_labels(rng: np.random.Generator, grid: GridSpec = GRID, p_occ: float = 0.45) -> np.ndarray:
    lab = rng.integers(1, 20, grid.dims).astype(np.uint8)
    lab[rng.random(grid.dims) > p_occ] = 0
    lab[rng.random(grid.dims) < 0.05] = 255
    return lab


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(q)
    T[:3, 3] = rng.normal(size=3) * 3
    return T


# --------------------------------------------------------------------------------------------- references
def centre(grid: GridSpec, i: int, j: int, k: int):
    return tuple(o + (n + 0.5) * grid.voxel_size for o, n in zip(grid.origin, (i, j, k)))


def reference_select(labels, confidence=None, conf_threshold=0.0, class_filter=None, surface_only=False,
                     max_voxels=None, grid=GRID, sensor=(0.0, 0.0, 0.0)):
    X, Y, Z = grid.dims
    cands = []
    for i in range(X):
        for j in range(Y):
            for k in range(Z):
                lab = int(labels[i, j, k])
                if lab in (0, 255):
                    continue
                if surface_only:
                    exposed = False
                    for di, dj, dk in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                        a, b, c = i + di, j + dj, k + dk
                        if not (0 <= a < X and 0 <= b < Y and 0 <= c < Z) or int(labels[a, b, c]) in (0, 255):
                            exposed = True
                    if not exposed:
                        continue
                if class_filter is not None and lab not in class_filter:
                    continue
                if confidence is not None and conf_threshold > 0:
                    c8 = int(confidence[i, j, k])
                    if c8 < round(conf_threshold * 255):
                        continue
                flat = (i * Y + j) * Z + k
                x, y, z = centre(grid, i, j, k)
                d2 = (x - sensor[0]) ** 2 + (y - sensor[1]) ** 2 + (z - sensor[2]) ** 2
                cands.append((d2, flat))
    if max_voxels is not None:
        cands = sorted(cands)[:max_voxels]
    return sorted(f for _, f in cands)


def reference_points(flats, labels, grid, pose):
    """flat -> (x, y, z) in the output frame and label, one voxel at a time."""
    out = {}
    X, Y, Z = grid.dims
    for f in flats:
        i, rem = divmod(int(f), Y * Z)
        j, k = divmod(rem, Z)
        p = centre(grid, i, j, k)
        q = [sum(pose[r][c] * p[c] for c in range(3)) + pose[r][3] for r in range(3)]
        out[int(f)] = (q, int(labels[i, j, k]))
    return out


def read_cloud(msg) -> dict:
    """Decode a PointCloud2 from its own field descriptions (not from the encoder's dtype)."""
    types = {7: "<f4", 2: "u1", 6: "<u4"}
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    assert raw.size == msg.point_step * msg.width * msg.height == msg.row_step * msg.height
    out = {}
    for f in msg.fields:
        dt = np.dtype(types[f.datatype])
        cols = raw.reshape(-1, msg.point_step)[:, f.offset: f.offset + dt.itemsize]
        out[f.name] = np.ascontiguousarray(cols).view(dt).reshape(-1)
    return out


# --------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("seed", range(4))
def test_select_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    conf = rng.integers(0, 256, GRID.dims, dtype=np.uint8)
    cases = [
        dict(),
        dict(surface_only=True),
        dict(confidence=conf, conf_threshold=0.5),
        dict(class_filter={1, 9, 13}),
        dict(max_voxels=17),
        dict(max_voxels=40, surface_only=True, class_filter={2, 3, 4, 5, 6, 7}),
        dict(max_voxels=0),
    ]
    for kw in cases:
        got = select_voxels(labels, grid=GRID, **kw)
        assert got.tolist() == reference_select(labels, **kw), kw


@pytest.mark.parametrize("density", [0.0, 0.002, 0.03, 0.1, 0.4, 1.0])
def test_flat_nonzero_equals_numpy(density: float) -> None:
    from scanssc_ros.voxels import flat_nonzero

    rng = np.random.default_rng(int(density * 1000))
    for shape in ((256, 256, 32), (64, 64, 8), (1001, 9), (4097,), (5, 3)):  # word path and the fallbacks
        mask = rng.random(shape) < density
        got = flat_nonzero(mask)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.flatnonzero(mask), err_msg=str(shape))
    clustered = np.zeros((256, 256, 32), bool)  # whole columns, as in a scene: few busy words, all bytes set
    clustered[40:60, 100:180, 3:11] = True
    np.testing.assert_array_equal(flat_nonzero(clustered), np.flatnonzero(clustered))
    strided = np.zeros((512, 256, 32), bool)[::2]  # not contiguous
    strided[5, 6, 7] = True
    np.testing.assert_array_equal(flat_nonzero(strided), np.flatnonzero(strided))


def test_select_ties_and_sensor_position() -> None:
    labels = np.ones(GRID.dims, np.uint8)
    for sensor in [(0.0, 0.0, 0.0), (1.25, -0.75, 0.25)]:
        for k in (1, 6, 13, 50):  # many voxels share a distance: ties go to the lower index
            got = select_voxels(labels, max_voxels=k, grid=GRID, sensor_position=sensor)
            assert got.tolist() == reference_select(labels, max_voxels=k, sensor=sensor)


def test_select_float_confidence() -> None:
    labels = np.ones(GRID.dims, np.uint8)
    conf = np.linspace(0, 1, GRID.num_voxels).reshape(GRID.dims)
    got = select_voxels(labels, confidence=conf, conf_threshold=0.7, grid=GRID)
    expected = np.flatnonzero(np.rint(conf.reshape(-1) * 255) >= round(0.7 * 255))
    np.testing.assert_array_equal(got, expected)


def test_surface_of_a_solid_block_is_its_shell() -> None:
    labels = np.zeros(GRID.dims, np.uint8)
    labels[1:6, 1:6, 1:4] = 13
    surf = select_voxels(labels, surface_only=True, grid=GRID)
    assert surf.size == 5 * 5 * 3 - 3 * 3 * 1
    full = np.ones(GRID.dims, np.uint8)  # touching the border: the whole outer shell counts as exposed
    X, Y, Z = GRID.dims
    assert select_voxels(full, surface_only=True, grid=GRID).size == X * Y * Z - (X - 2) * (Y - 2) * (Z - 2)


def test_select_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="grid dims"):
        select_voxels(np.zeros((2, 2, 2), np.uint8), grid=GRID)
    with pytest.raises(ValueError, match="class_filter"):
        select_voxels(np.ones(GRID.dims, np.uint8), class_filter=[1, 300], grid=GRID)
    with pytest.raises(ValueError, match="confidence shape"):
        select_voxels(np.ones(GRID.dims, np.uint8), confidence=np.ones((2, 2, 2)), conf_threshold=0.5, grid=GRID)


@pytest.mark.slow
def test_surface_on_real_occupancy(kitti_seq) -> None:
    grid = GridSpec()
    occ = np.unpackbits(np.fromfile(kitti_seq / "voxels" / "000000.bin", np.uint8)).reshape(grid.dims)
    labels = occ * np.uint8(13)
    got = set(select_voxels(labels, surface_only=True, grid=grid).tolist())
    X, Y, Z = grid.dims
    expected = set()
    for i, j, k in zip(*np.nonzero(occ)):
        for di, dj, dk in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            a, b, c = i + di, j + dj, k + dk
            if not (0 <= a < X and 0 <= b < Y and 0 <= c < Z) or not occ[a, b, c]:
                expected.add(int((i * Y + j) * Z + k))
                break
    assert got == expected and 0 < len(got) < int(occ.sum())


# -------------------------------------------------------------------------------------------- PointCloud2
@pytest.mark.parametrize("seed", range(3))
def test_pointcloud_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    labels = random_labels(rng)
    conf = rng.integers(0, 256, GRID.dims, dtype=np.uint8)
    pose = random_pose(rng) if seed else None
    idx = select_voxels(labels, grid=GRID)
    msg = to_pointcloud2(idx, labels, GRID, Header(frame_id="out"), pose=pose, colors=COLORS,
                         confidence=conf if seed != 1 else None)
    assert (msg.height, msg.width, msg.is_bigendian, msg.header.frame_id) == (1, idx.size, False, "out")
    cloud = read_cloud(msg)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "label"] + (["confidence"] if seed != 1 else [])
    ref = reference_points(idx, labels, GRID, np.eye(4) if pose is None else pose)
    records = np.frombuffer(bytes(msg.data), np.uint8).reshape(-1, msg.point_step)
    assert not records[:, 18:].any()  # the padding goes out as zeros, not as whatever memory held
    if seed == 1:
        assert not records[:, 17].any()
    for n, f in enumerate(idx.tolist()):
        (x, y, z), lab = ref[f]
        assert cloud["x"][n] == pytest.approx(x, abs=1e-5) and cloud["y"][n] == pytest.approx(y, abs=1e-5)
        assert cloud["z"][n] == pytest.approx(z, abs=1e-5)
        assert cloud["label"][n] == lab
        rgb = int(np.float32(cloud["rgb"][n]).view(np.uint32))
        assert ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255) == tuple(COLORS[lab])
        if "confidence" in cloud:
            assert cloud["confidence"][n] == conf.reshape(-1)[f]


def test_pointcloud_empty_and_bad_indices() -> None:
    labels = np.zeros(GRID.dims, np.uint8)
    msg = to_pointcloud2(np.zeros(0, np.int64), labels, GRID, Header())
    assert msg.width == 0 and len(msg.data) == 0
    with pytest.raises(ValueError, match="outside"):
        to_pointcloud2(np.array([GRID.num_voxels]), labels, GRID, Header())


# -------------------------------------------------------------------------------------------- MarkerArray
def marker_pose_matrix(m: Marker) -> np.ndarray:
    o, p = m.pose.orientation, m.pose.position
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation((o.x, o.y, o.z, o.w))
    T[:3, 3] = (p.x, p.y, p.z)
    return T


@pytest.mark.parametrize("seed", range(3))
def test_markers_match_reference_and_cloud(seed: int) -> None:
    rng = np.random.default_rng(20 + seed)
    labels = random_labels(rng)
    pose = random_pose(rng)
    idx = select_voxels(labels, grid=GRID)
    header = Header(frame_id="cam")
    arr, present = to_marker_array(idx, labels, GRID, header, NAMES, COLORS, lifetime=0.5, pose=pose,
                                   point_cache=PointCache(GRID))
    grid_ref = reference_points(idx, labels, GRID, np.eye(4))
    by_class: dict = {}
    for p, lab in grid_ref.values():
        by_class.setdefault(lab, set()).add(tuple(round(v, 9) for v in p))
    assert present == {NAMES[c] for c in by_class}
    assert [m.ns for m in arr.markers] == [NAMES[c] for c in sorted(by_class)]
    cloud = read_cloud(to_pointcloud2(idx, labels, GRID, header, pose=pose, colors=COLORS))
    cloud_pts = {(lab, tuple(np.round([x, y, z], 3))) for x, y, z, lab in
                 zip(cloud["x"], cloud["y"], cloud["z"], cloud["label"].tolist())}
    marker_pts = set()
    for m in arr.markers:
        cls = NAMES.index(m.ns)
        assert (m.type, m.action, m.id, m.header.frame_id) == (Marker.CUBE_LIST, Marker.ADD, 0, "cam")
        assert m.scale.x == m.scale.y == m.scale.z == GRID.voxel_size
        assert (m.color.r, m.color.g, m.color.b, m.color.a) == pytest.approx((*(COLORS[cls] / 255.0), 1.0), abs=1e-6)
        assert len(m.colors) == 0
        assert (m.lifetime.sec, m.lifetime.nanosec) == (0, 500_000_000)
        np.testing.assert_allclose(marker_pose_matrix(m), pose, atol=1e-9)
        pts = np.array([(p.x, p.y, p.z) for p in m.points])
        assert {tuple(round(v, 9) for v in p) for p in pts.tolist()} == by_class[cls]
        assert len(pts) == len(by_class[cls])
        world = pts @ pose[:3, :3].T + pose[:3, 3]  # what RViz draws
        marker_pts |= {(cls, tuple(np.round(w.astype(np.float32), 3))) for w in world}
    assert marker_pts == cloud_pts


def test_marker_delete_semantics() -> None:
    labels = np.zeros(GRID.dims, np.uint8)
    labels[0, 0, 0] = 1  # car
    idx = select_voxels(labels, grid=GRID)
    arr, present = to_marker_array(idx, labels, GRID, Header(), NAMES, COLORS, prev_namespaces={"car", "road"})
    assert present == {"car"}
    assert [(m.ns, m.action) for m in arr.markers] == [("car", Marker.ADD), ("road", Marker.DELETE)]
    arr, _ = to_marker_array(idx, labels, GRID, Header(), NAMES, COLORS, prev_namespaces={"road"},
                             clear_first=True)
    assert [(m.ns, m.action) for m in arr.markers] == [("", Marker.DELETEALL), ("car", Marker.ADD)]
    arr, present = to_marker_array(idx[:0], labels, GRID, Header(), NAMES, COLORS, prev_namespaces=present)
    assert present == set() and [(m.ns, m.action) for m in arr.markers] == [("car", Marker.DELETE)]
    with pytest.raises(ValueError, match="class name"):
        to_marker_array(idx, labels, GRID, Header(), NAMES[:1], COLORS)


def test_point_cache_paths_agree_and_reuse() -> None:
    rng = np.random.default_rng(3)
    flat = rng.choice(GRID.num_voxels, 50, replace=False)
    fast, slow = PointCache(GRID), PointCache(GRID, fast=False)
    a, b = fast.points(flat), slow.points(flat)
    assert a == b and len(fast) == 50
    assert all(p is q for p, q in zip(fast.points(flat), a))  # second call reuses the cached objects
    small = PointCache(GRID, max_points=60)
    small.points(flat)
    again = small.points(rng.choice(GRID.num_voxels, 30, replace=False))  # overflows: starts over
    assert len(small) == 30 and len(again) == 30
    ref = reference_points(flat, np.ones(GRID.dims, np.uint8), GRID, np.eye(4))
    for f, p in zip(flat.tolist(), a):
        assert (p.x, p.y, p.z) == pytest.approx(ref[f][0], abs=1e-12)


# ---------------------------------------------------------------------------------------------- diagnostics
def test_diagnostics_levels() -> None:
    ok = diagnostics_message({"latency_ms": {"decode": 2.0, "model": 80.0}, "input_rate_hz": 10, "output_rate_hz": 9,
                              "frames_in": 100, "frames_dropped": 5, "device": "cpu"})
    st = ok.status[0]
    vals = {kv.key: kv.value for kv in st.values}
    assert st.level == DIAG_OK and st.hardware_id == "cpu"
    assert vals["latency_ms/total"] == "82.00" and vals["drop_fraction"] == "0.050" and vals["device"] == "cpu"
    warn = diagnostics_message({"latency_ms": {"model": 300.0}, "frames_in": 10, "frames_dropped": 6}).status[0]
    assert warn.level == DIAG_WARN and "latency" in warn.message and "dropped" in warn.message
    err = diagnostics_message({"input_rate_hz": 10, "output_rate_hz": 0, "latency_ms": {"model": 300.0}}).status[0]
    assert err.level == DIAG_ERROR and "nothing is published" in err.message and "latency" not in err.message
    assert diagnostics_message({"latency_ms": {"total": 1500.0, "model": 1.0}}).status[0].level == DIAG_ERROR
    assert diagnostics_message({"output_rate_hz": 2.0}, min_output_hz=5).status[0].level == DIAG_WARN


# --------------------------------------------------------------------------------------------- round trips
@pytest.mark.ros
def test_serialization_round_trip() -> None:
    serialization = pytest.importorskip("rclpy.serialization")
    rng = np.random.default_rng(7)
    labels = random_labels(rng)
    idx = select_voxels(labels, grid=GRID)
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 1_300_000_000, 123
    pose = random_pose(rng)
    cloud = to_pointcloud2(idx, labels, GRID, header, pose=pose, colors=COLORS,
                           confidence=rng.random(GRID.dims))
    markers, _ = to_marker_array(idx, labels, GRID, header, NAMES, COLORS, prev_namespaces={"ghost"}, pose=pose,
                                 lifetime=0.3)
    diag = diagnostics_message({"latency_ms": {"model": 1.0}, "device": "cpu"}, header=header)
    for msg in (cloud, markers, diag):
        back = serialization.deserialize_message(serialization.serialize_message(msg), type(msg))
        assert back == msg
    back = serialization.deserialize_message(serialization.serialize_message(cloud), type(cloud))
    assert read_cloud(back)["label"].tolist() == labels.reshape(-1)[idx].tolist()


def test_quaternion_helpers() -> None:
    from scanssc_ros.geometry import rotation_to_quaternion
    rng = np.random.default_rng(5)
    mats = [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]
    mats += [quaternion_to_rotation(rng.normal(size=4)) for _ in range(50)]
    for R in mats:
        q = rotation_to_quaternion(R)
        assert np.linalg.norm(q) == pytest.approx(1.0) and q[3] >= 0
        np.testing.assert_allclose(quaternion_to_rotation(q), R, atol=1e-12)
    # KITTI's Tr rotation is orthogonal only to ~1e-6: the result must still be a unit quaternion close to it
    tr = np.array([[-1.857739385241e-03, -9.999659513510e-01, -8.039975204516e-03],
                   [-6.481465826011e-03, 8.051860151134e-03, -9.999466081774e-01],
                   [9.999773098287e-01, -1.805528627661e-03, -6.496203536139e-03]])
    np.testing.assert_allclose(quaternion_to_rotation(rotation_to_quaternion(tr)), tr, atol=1e-5)
