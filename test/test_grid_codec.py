"""~/voxels payload encodings (dense, sparse, zlib): exact round trips in Python and through the ROS message, and
clear errors for payloads that do not match their declared encoding."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from scanssc_ros.grid_codec import ENCODINGS, GridDecodeError, decode_payload, encode_grid


def _prediction(seed: int = 0, dims=(32, 24, 8)):
    rng = np.random.default_rng(seed)
    labels = np.zeros(dims, np.uint8)
    labels[..., :2] = 9  # road
    labels[rng.random(dims) < 0.1] = rng.integers(1, 20)
    labels[:, :4] = 255  # out of view
    return labels, rng.integers(0, 256, dims, dtype=np.uint8)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_is_exact(encoding):
    labels, conf = _prediction()
    p = encode_grid(labels, conf, encoding)
    assert p.encoding == encoding
    lab, c = decode_payload(p.encoding, labels.shape, p.labels, p.confidence, p.indices)
    assert lab.dtype == np.uint8 and np.array_equal(lab, labels)
    keep = labels != 0 if encoding == "sparse" else np.ones(labels.shape, bool)  # sparse: empty voxels' dropped
    assert np.array_equal(c[keep], conf[keep]) and not c[~keep].any()
    lab, c = decode_payload(p.encoding, labels.shape, p.labels, b"", p.indices)  # confidence optional
    assert np.array_equal(lab, labels) and c is None
    zero = encode_grid(np.zeros_like(labels), None, encoding)  # nothing occupied: an empty sparse payload
    assert not decode_payload(encoding, labels.shape, zero.labels, b"", zero.indices)[0].any()


def test_sizes_follow_the_content():
    labels, conf = _prediction()
    n = labels.size
    dense, sparse, packed = (encode_grid(labels, None, e) for e in ENCODINGS)
    assert len(dense.labels) == n and not dense.confidence
    assert len(sparse.labels) == sparse.indices.size == np.count_nonzero(labels)
    assert np.all(np.diff(sparse.indices.astype(np.int64)) > 0)
    assert len(packed.labels) < n / 5  # long runs of few classes


def test_empty_encoding_reads_as_dense_and_old_messages_decode():
    labels, _ = _prediction()
    lab, c = decode_payload("", labels.shape, labels.tobytes())
    assert np.array_equal(lab, labels) and c is None


@pytest.mark.parametrize("encoding, labels_payload, indices, match", [
    ("dense", b"\x00" * 10, (), "10 bytes for a grid of"),
    ("zlib", b"not zlib at all", (), "not a zlib stream"),
    ("zlib", zlib.compress(b"\x00" * 10), (), "10 bytes for a grid of"),
    ("zlib", zlib.compress(b"\x00" * 100000), (), "truncated or larger"),
    ("zlib", zlib.compress(b"\x00" * 6144)[:-3], (), "truncated or larger"),
    ("sparse", b"\x01\x02", (5,), "2 labels"),
    ("sparse", b"\x01\x02", (7, 5), "ascending"),
    ("sparse", b"\x01", (6144,), "inside"),
    ("lz4", b"", (), "unknown grid encoding"),
])
def test_bad_payloads_raise(encoding, labels_payload, indices, match):
    with pytest.raises(GridDecodeError, match=match):
        decode_payload(encoding, (32, 24, 8), labels_payload, b"", indices)


def test_unknown_encoding_is_refused_when_encoding():
    with pytest.raises(ValueError, match="unknown grid encoding"):
        encode_grid(np.zeros((2, 2, 2), np.uint8), None, "png")


@pytest.mark.ros
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_through_the_ros_message(encoding):
    pytest.importorskip("rclpy", reason="rclpy not installed (run `make test` for the ROS tests)")
    from rclpy.serialization import deserialize_message, serialize_message
    from scanssc_ros.msg import SemanticVoxelGrid
    from std_msgs.msg import Header

    from scanssc_ros.geometry import GridSpec
    from scanssc_ros.grid_codec import decode_grid
    from scanssc_ros.labels import SEMANTIC_KITTI
    from scanssc_ros.ros.grid_message import to_grid_message

    labels, conf = _prediction(1)
    grid = GridSpec((0.0, -2.4, -0.8), 0.2, labels.shape)
    msg = to_grid_message(labels, grid, Header(frame_id="cam"), SEMANTIC_KITTI, confidence=conf, encoding=encoding)
    back = deserialize_message(serialize_message(msg), SemanticVoxelGrid)
    assert back.encoding == encoding == getattr(SemanticVoxelGrid, f"ENCODING_{encoding.upper()}")
    lab, c = decode_grid(back)
    assert np.array_equal(lab, labels)
    keep = labels != 0 if encoding == "sparse" else np.ones(labels.shape, bool)
    assert np.array_equal(c[keep], conf[keep])
