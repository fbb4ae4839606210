"""Semantic voxel grids as ``.ply`` files for other tools (open3d, MeshLab, CloudCompare, Blender). numpy only.

Two forms, both binary little-endian with per-vertex ``red green blue`` (the class colour) and ``label`` (the class
id) of the occupied voxels (not empty 0, not unknown 255):
- ``points``: one vertex per occupied voxel, at its centre (16 bytes per voxel);
- ``mesh``: the voxels' exposed faces (``voxel_mesh.exposed_faces``) as triangles, four vertices per face.
The header's comments record the grid (``scanssc_grid origin_x origin_y origin_z voxel_size X Y Z``, grid frame:
x forward, y left, z up) and the class names, so ``read_ply`` + ``points_to_grid`` give the label grid back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from scanssc_ros.geometry import GridSpec, voxel_centers_in_frame
from scanssc_ros.voxel_mesh import exposed_faces, quad_triangles
from scanssc_ros.voxels import occupied_mask

FORMS = ("points", "mesh")
_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                    ("label", "u1")])
_FACE = np.dtype([("n", "u1"), ("v", "<i4", (3,))])


@dataclass
class PlyVoxels:
    vertices: np.ndarray  # (N, 3) float32
    colors: np.ndarray  # (N, 3) uint8
    labels: np.ndarray  # (N,) uint8
    triangles: Optional[np.ndarray]  # (M, 3) int32, mesh form only
    grid: Optional[GridSpec]
    class_names: Optional[Sequence[str]]


def write_ply(path: Union[str, Path], labels: np.ndarray, grid: GridSpec, colors: np.ndarray,
              class_names: Optional[Sequence[str]] = None, form: str = "points") -> Path:
    if form not in FORMS:
        raise ValueError(f"unknown ply form {form!r}; known: {FORMS}")
    labels = np.asarray(labels)
    colors = np.asarray(colors, np.uint8)
    if form == "points":
        flat = np.flatnonzero(occupied_mask(labels))
        xyz = voxel_centers_in_frame(flat, grid)
        cls = labels.reshape(-1)[flat]
        triangles = None
    else:
        faces = exposed_faces(occupied_mask(labels), grid)
        xyz = faces.vertices
        cls = np.repeat(labels[faces.voxel[:, 0], faces.voxel[:, 1], faces.voxel[:, 2]], 4)
        triangles = quad_triangles(len(faces))
    vertex = np.empty(len(xyz), _VERTEX)
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rgb = colors[cls]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    vertex["label"] = cls
    head = ["ply", "format binary_little_endian 1.0",
            "comment scanssc_grid " + " ".join(str(v) for v in (*grid.origin, grid.voxel_size, *grid.dims))]
    if class_names is not None:
        head.append("comment scanssc_classes " + ",".join(class_names))
    head += [f"element vertex {len(vertex)}"] + [f"property {_PLY_TYPE[vertex.dtype[n].str]} {n}"
                                                for n in vertex.dtype.names]
    if triangles is not None:
        head += [f"element face {len(triangles)}", "property list uchar int vertex_indices"]
    head.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode("ascii"))
        f.write(vertex.tobytes())
        if triangles is not None:
            face = np.empty(len(triangles), _FACE)
            face["n"], face["v"] = 3, triangles
            f.write(face.tobytes())
    return path


_PLY_TYPE = {"<f4": "float", "|u1": "uchar"}


def read_ply(path: Union[str, Path]) -> PlyVoxels:
    """A file written by ``write_ply`` (this exact layout; not a general PLY reader)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    grid, names, n_vertex, n_face = None, None, 0, 0
    for line in data[:end].decode("ascii").splitlines():
        words = line.split()
        if words[:2] == ["comment", "scanssc_grid"]:
            v = [float(w) for w in words[2:]]
            grid = GridSpec(tuple(v[:3]), v[3], tuple(int(d) for d in v[4:7]))
        elif words[:2] == ["comment", "scanssc_classes"]:
            names = line.split(" ", 2)[2].split(",")
        elif words[:2] == ["element", "vertex"]:
            n_vertex = int(words[2])
        elif words[:2] == ["element", "face"]:
            n_face = int(words[2])
    vertex = np.frombuffer(data, _VERTEX, n_vertex, end)
    triangles = None
    if n_face:
        face = np.frombuffer(data, _FACE, n_face, end + n_vertex * _VERTEX.itemsize)
        triangles = face["v"].astype(np.int32)
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)
    rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1)
    return PlyVoxels(xyz, rgb, vertex["label"].copy(), triangles, grid, names)


def points_to_grid(ply: PlyVoxels) -> np.ndarray:
    """The label grid of a ``points`` file (unwritten voxels, i.e. empty and unknown ones, come back as 0)."""
    if ply.grid is None:
        raise ValueError("the file records no scanssc_grid")
    g = ply.grid
    idx = np.floor((ply.vertices - np.asarray(g.origin, np.float32)) / np.float32(g.voxel_size)).astype(np.int64)
    out = np.zeros(g.dims, np.uint8)
    out[idx[:, 0], idx[:, 1], idx[:, 2]] = ply.labels
    return out
