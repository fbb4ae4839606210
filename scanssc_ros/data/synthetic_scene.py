"""Procedural street scenes for the synthetic SemanticKITTI generator (layout only; sensors are in ``synthetic``).

A scene is a list of labelled analytic solids (``raycast`` shapes) in *scene coordinates*: the velodyne / grid
frame of the drive's first frame (x forward, y left, z up). The ego vehicle drives along +x in a lane of a straight
road; frame j sees the scene shifted by the ego's travel, and moving vehicles additionally by their own travel.

Layout, from the road outwards on each side: optional parking strip, sidewalk (raised by a curb), optional
terrain verge with trees and bushes, then a row of buildings or a park (terrain, trees, a fence or a hedge), and
terrain to the end. Poles, traffic signs and pedestrians stand on the sidewalks, parked cars in the parking strips,
moving cars and trucks in the lanes (right-hand traffic). An optional cross street cuts everything but the road.

Ground-strip borders lie on voxel boundaries, so each ground voxel column belongs to one strip and the voxel labels
of road / sidewalk / terrain points agree with their point labels. The ego lane stays clear of everything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Sequence, Tuple

import numpy as np

from scanssc_ros.data.raycast import Box, Cylinder, Shape, Sphere
from scanssc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from scanssc_ros.labels import SEMANTIC_KITTI

CLS: Dict[str, int] = {name: i for i, name in enumerate(SEMANTIC_KITTI.classes)}
# SemanticKITTI raw ids: learning_map_inv of the 20 train ids, and the "moving-*" ids of the classes that move here
RAW_OF_TRAIN: Tuple[int, ...] = (0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81)
MOVING_RAW: Dict[int, int] = {CLS["car"]: 252, CLS["truck"]: 258}
# which solid wins a voxel that several overlap: small and thin things over large ones, everything over ground
PRIORITY: Dict[int, int] = {
    **{CLS[c]: 1 for c in ("road", "parking", "sidewalk", "other-ground", "terrain")},
    CLS["building"]: 2, CLS["vegetation"]: 3, CLS["fence"]: 3,
    **{CLS[c]: 4 for c in ("car", "bicycle", "motorcycle", "truck", "other-vehicle")},
    **{CLS[c]: 5 for c in ("trunk", "person", "bicyclist", "motorcyclist")},
    CLS["pole"]: 6, CLS["traffic-sign"]: 7,
}
WORLD_Y = 60.0  # half-width of the ground strips (beyond the LiDAR's useful range sideways)
SLAB_DEPTH = 0.3  # ground slabs reach this far below the road so no gap shows under curbs
SKIN = 0.05  # voxel occupancy of a ground slab: its top 5 cm, i.e. the voxel layer of the surface

_BUILDING_RGB = ((0.76, 0.70, 0.60), (0.62, 0.42, 0.33), (0.80, 0.78, 0.72), (0.55, 0.56, 0.60), (0.70, 0.62, 0.45))
_CAR_RGB = ((0.80, 0.80, 0.82), (0.12, 0.12, 0.14), (0.62, 0.08, 0.06), (0.15, 0.22, 0.52), (0.50, 0.52, 0.55),
            (0.86, 0.84, 0.78), (0.30, 0.40, 0.25))
_SIGN_RGB = ((0.85, 0.12, 0.10), (0.10, 0.25, 0.75), (0.95, 0.80, 0.10))


@dataclass(frozen=True)
class Part:
    """One labelled solid. ``raw``: SemanticKITTI raw id; ``instance``: >0 for things (vehicles, people);
    ``velocity``: m/s along x; ``shift``: how far the part has been moved from its scene position (the texture
    stays attached to the part); ``pattern``: "" | "windows" | "lanes"."""

    shape: Shape
    label: int
    raw: int
    color: Tuple[float, float, float]
    instance: int = 0
    velocity: float = 0.0
    pattern: str = ""
    shift: Tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Scene:
    """Parts in scene coordinates plus what frames and textures need; ``at_frame`` places them for frame j."""

    seed: int
    parts: List[Part]
    ground_z: float
    lane_marks: Tuple[float, ...]  # y of the dashed lines between lanes (scene coordinates)
    step: float  # ego travel per frame (m)
    dt: float  # s between frames
    frames: int
    texture_seed: int = 0

    def ego_x(self, j: int) -> float:
        return j * self.step

    def at_frame(self, j: int, reach: float = 100.0) -> List[Part]:
        """Parts in frame j's grid frame (ego at the origin); parts beyond ``reach`` m in x are dropped."""
        out = []
        for p in self.parts:
            dx = -self.ego_x(j) + p.velocity * j * self.dt
            lo, hi = p.shape.bounds()
            if hi[0] + dx < -reach or lo[0] + dx > reach:
                continue
            out.append(replace(p, shape=p.shape.translated((dx, 0.0, 0.0)), shift=(dx, 0.0, 0.0)))
        return out


class _Layout:
    """Builds the part list; all randomness comes from one numpy Generator, consumed in a fixed order."""

    def __init__(self, rng: np.random.Generator, ground_z: float, grid: GridSpec):
        self.rng, self.gz, self.grid = rng, ground_z, grid
        self.parts: List[Part] = []
        self.instances = 0
        self.gaps: List[Tuple[float, float]] = []  # x intervals of the cross street

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def snap(self, v: float, axis: int) -> float:
        o, s = self.grid.origin[axis], self.grid.voxel_size
        return o + round((v - o) / s) * s

    def jitter(self, rgb: Sequence[float], amount: float = 0.08) -> Tuple[float, float, float]:
        return tuple(float(np.clip(c * (1 + self.u(-amount, amount)), 0, 1)) for c in rgb)

    def add(self, shape: Shape, cls: str, rgb: Sequence[float], instance: int = 0, velocity: float = 0.0,
            pattern: str = "") -> None:
        label = CLS[cls]
        raw = MOVING_RAW.get(label, RAW_OF_TRAIN[label]) if velocity else RAW_OF_TRAIN[label]
        self.parts.append(Part(shape, label, raw, tuple(rgb), instance, velocity, pattern))

    def new_instance(self) -> int:
        self.instances += 1
        return self.instances

    def in_gap(self, x0: float, x1: float) -> bool:
        return any(x0 < g1 and x1 > g0 for g0, g1 in self.gaps)

    def segments(self, x0: float, x1: float) -> List[Tuple[float, float]]:
        """[x0, x1] minus the cross street."""
        out, cur = [], x0
        for g0, g1 in sorted(self.gaps):
            if g0 > cur:
                out.append((cur, min(g0, x1)))
            cur = max(cur, g1)
        if cur < x1:
            out.append((cur, x1))
        return out

    def slab(self, x0: float, x1: float, ya: float, yb: float, top: float, cls: str, rgb, pattern: str = ""):
        y0, y1 = min(ya, yb), max(ya, yb)
        bottom = self.gz - SLAB_DEPTH
        self.add(Box(((x0 + x1) / 2, (y0 + y1) / 2, (top + bottom) / 2), ((x1 - x0) / 2, (y1 - y0) / 2,
                                                                          (top - bottom) / 2), skin=SKIN),
                 cls, self.jitter(rgb, 0.05), pattern=pattern)

    # ----------------------------------------------------------------------------------------------- objects
    def vehicle_length(self, truck: bool) -> float:
        return self.u(6.0, 9.0) if truck else self.u(3.8, 4.9)

    def vehicle(self, x: float, y: float, yaw: float, length: float, truck: bool, velocity: float = 0.0) -> None:
        inst, gz, L = self.new_instance(), self.gz, length
        c, s = math.cos(yaw), math.sin(yaw)
        at = lambda lx, ly: (x + c * lx - s * ly, y + s * lx + c * ly)  # noqa: E731  car frame -> scene
        if truck:
            W, cls = self.u(2.3, 2.5), "truck"
            rgb = self.jitter(((0.85, 0.85, 0.85), (0.20, 0.35, 0.60), (0.70, 0.20, 0.15))[self.rng.integers(3)])
            hc, hb, clear = self.u(2.5, 2.9), self.u(3.0, 3.6), 0.5
            boxes = [((L / 2 - 1.1, 0.0), (1.1, W / 2), (clear, hc)), ((-1.2, 0.0), (L / 2 - 1.2, W / 2), (clear, hb))]
        else:
            W, cls = self.u(1.65, 1.9), "car"
            rgb = self.jitter(_CAR_RGB[self.rng.integers(len(_CAR_RGB))])
            H, clear = self.u(1.4, 1.6), 0.3
            hb = clear + (H - clear) * 0.55
            boxes = [((0.0, 0.0), (L / 2, W / 2), (clear, hb)), ((-0.1 * L, 0.0), (0.28 * L, W * 0.45), (hb, H))]
        for (lx, ly), (hx, hy), (z0, z1) in boxes:
            self.add(Box((*at(lx, ly), gz + (z0 + z1) / 2), (hx, hy, (z1 - z0) / 2), yaw), cls, rgb, inst, velocity)
        for sx in (-1, 1):
            for sy in (-1, 1):
                self.add(Box((*at(sx * (L / 2 - 0.8), sy * (W / 2 - 0.12)), gz + 0.32), (0.32, 0.12, 0.32), yaw),
                         cls, (0.05, 0.05, 0.05), inst, velocity)

    def tree(self, x: float, y: float, base: float) -> None:
        h, r = self.u(1.8, 3.5), self.u(0.12, 0.3)
        self.add(Cylinder(x, y, r, self.gz - SLAB_DEPTH, base + h), "trunk", self.jitter((0.33, 0.24, 0.16)))
        rc = self.u(1.2, 2.5)
        rgb = self.jitter((0.18, 0.40, 0.14), 0.2)
        for _ in range(int(self.rng.integers(3, 7))):
            cx, cy = x + self.u(-0.3, 0.3) * rc, y + self.u(-0.3, 0.3) * rc
            self.add(Sphere((cx, cy, base + h + rc * self.u(0.5, 1.0)), rc * self.u(0.6, 0.9)), "vegetation", rgb)

    def bush(self, x: float, y: float, base: float) -> None:
        rgb = self.jitter((0.22, 0.42, 0.16), 0.2)
        for _ in range(int(self.rng.integers(2, 5))):
            r = self.u(0.4, 0.9)
            self.add(Sphere((x + self.u(-0.8, 0.8), y + self.u(-0.5, 0.5), base + r * self.u(0.1, 0.5)), r),
                     "vegetation", rgb)

    def pole(self, x: float, y: float, base: float, toward_road: float, sign_only: bool) -> None:
        h = self.u(2.3, 3.0) if sign_only else self.u(4.5, 8.0)
        r = self.u(0.04, 0.07) if sign_only else self.u(0.08, 0.14)
        self.add(Cylinder(x, y, r, self.gz - SLAB_DEPTH, base + h), "pole", self.jitter((0.55, 0.56, 0.58)))
        if sign_only or self.rng.random() < 0.35:
            zc = base + (h - 0.35 if sign_only else self.u(2.2, 3.2))
            plate = Box((x - r - 0.03, y + toward_road * 0.1, zc), (0.02, self.u(0.3, 0.45), self.u(0.3, 0.45)))
            self.add(plate, "traffic-sign", _SIGN_RGB[self.rng.integers(len(_SIGN_RGB))])


def generate_scene(seed: int, frames: int = 1, step: float = 0.8, dt: float = 0.1,
                   grid: GridSpec = SEMANTIC_KITTI_GRID) -> Scene:
    """A random street scene, fully determined by ``seed``, long enough for ``frames`` frames of ``step`` m
    (rounded to a whole number of voxels so strip borders stay on voxel boundaries in every frame)."""
    rng = np.random.default_rng(seed)
    step = grid.voxel_size * round(step / grid.voxel_size)
    b = _Layout(rng, float(rng.uniform(-1.78, -1.68)), grid)
    gz = b.gz
    x_lo, x_hi = -40.0, (frames - 1) * step + grid.upper[0] + 60.0

    n_lanes = int(rng.integers(2, 5))
    lane_w = b.u(3.0, 3.6)
    n_fwd = (n_lanes + 1) // 2  # right-hand traffic: the lanes at low y go forward (+x)
    ego_lane = int(rng.integers(n_fwd))
    y0 = b.snap(-(ego_lane + 0.5) * lane_w + b.u(-0.3, 0.3), 1)
    y1 = b.snap(y0 + n_lanes * lane_w, 1)
    lane_w = (y1 - y0) / n_lanes
    marks = tuple(y0 + k * lane_w for k in range(1, n_lanes))
    if rng.random() < 0.4:
        xc = b.snap(b.u(12.0, 40.0) + (frames - 1) * step * rng.random(), 0)
        b.gaps.append((xc, b.snap(xc + b.u(7.0, 12.0), 0)))
    road_rgb = (0.30, 0.30, 0.32)
    b.slab(x_lo, x_hi, y0, y1, gz, "road", road_rgb, "lanes")
    for g0, g1 in b.gaps:
        for ya, yb in ((-WORLD_Y, y0), (y1, WORLD_Y)):
            b.slab(g0, g1, ya, yb, gz, "road", road_rgb)

    for side, edge in ((-1.0, y0), (1.0, y1)):
        strips: List[Tuple[str, float, float]] = []
        if rng.random() < 0.5:
            strips.append(("parking", b.u(2.0, 2.6), 0.0))
        curb = b.u(0.10, 0.16)
        strips.append(("sidewalk", b.u(1.5, 4.0), curb))
        if rng.random() < 0.5:
            strips.append(("terrain", b.u(1.5, 5.0), b.u(0.0, 0.08)))
        cursor, placed = edge, {}
        for cls, width, rise in strips:
            outer = b.snap(cursor + side * width, 1)
            placed[cls] = (cursor, outer, gz + rise)
            rgb = {"parking": (0.42, 0.40, 0.38), "sidewalk": (0.62, 0.60, 0.56), "terrain": (0.42, 0.46, 0.26)}[cls]
            for x0, x1 in b.segments(x_lo, x_hi):
                b.slab(x0, x1, cursor, outer, gz + rise, cls, rgb)
            cursor = outer
        front = cursor
        back_top = gz + b.u(0.0, 0.1)
        for x0, x1 in b.segments(x_lo, x_hi):
            b.slab(x0, x1, front, side * WORLD_Y, back_top, "terrain", (0.42, 0.46, 0.26))

        inner, outer, top = placed["sidewalk"]
        x = x_lo + b.u(0.0, 10.0)
        while x < x_hi:  # poles and signs at the road side of the sidewalk
            if not b.in_gap(x - 1, x + 1):
                b.pole(x, inner + side * 0.45, top, -side, sign_only=rng.random() < 0.3)
            x += b.u(10.0, 30.0)
        for _ in range(int(rng.integers(0, 4))):  # pedestrians
            px, py = b.u(x_lo + 10, x_hi - 10), b.u(min(inner, outer) + 0.5, max(inner, outer) - 0.5)
            if not b.in_gap(px - 1, px + 1):
                b.add(Cylinder(px, py, b.u(0.2, 0.28), top, top + b.u(1.55, 1.9)), "person",
                      b.jitter(_CAR_RGB[rng.integers(len(_CAR_RGB))], 0.3), b.new_instance())
        if "parking" in placed:
            p_in, p_out, _ = placed["parking"]
            x = x_lo + b.u(0.0, 5.0)  # rear end of the next parked vehicle
            while x < x_hi:
                truck = rng.random() < 0.1
                L = b.vehicle_length(truck)
                if not b.in_gap(x, x + L):
                    b.vehicle(x + L / 2, (p_in + p_out) / 2 + b.u(-0.2, 0.2), b.u(-0.06, 0.06), L, truck)
                x += L + (b.u(8.0, 25.0) if rng.random() < 0.25 else b.u(0.5, 3.0))
        if "terrain" in placed:
            t_in, t_out, t_top = placed["terrain"]
            x = x_lo + b.u(0.0, 8.0)
            while x < x_hi:
                if not b.in_gap(x - 3, x + 3):
                    if rng.random() < 0.7:
                        b.tree(x, (t_in + t_out) / 2, t_top)
                    else:
                        b.bush(x, (t_in + t_out) / 2, t_top)
                x += b.u(6.0, 14.0)

        if rng.random() < 0.7:  # a row of buildings along the front line
            x = x_lo + b.u(0.0, 5.0)
            while x < x_hi:
                w = b.u(6.0, 20.0)
                for g0, g1 in b.gaps:
                    if x < g1 and x + w > g0:
                        x = g1 + b.u(0.0, 3.0)
                # off the voxel boundary of the front line, so facade points fall in the building's voxel column
                setback = 0.1 + (b.u(0.0, 1.4) if rng.random() < 0.5 else 0.0)
                depth, height = b.u(8.0, 16.0), b.u(4.0, 18.0)
                ya, yb = front + side * setback, front + side * (setback + depth)
                z0 = gz - SLAB_DEPTH
                b.add(Box((x + w / 2, (ya + yb) / 2, (z0 + back_top + height) / 2),
                          (w / 2, abs(yb - ya) / 2, (back_top + height - z0) / 2)),
                      "building", b.jitter(_BUILDING_RGB[rng.integers(len(_BUILDING_RGB))]), pattern="windows")
                x += w
                if rng.random() < 0.35:  # a gap to the next building, sometimes closed by a fence
                    gap = b.u(1.5, 6.0)
                    if rng.random() < 0.5 and not b.in_gap(x, x + gap):
                        h = b.u(1.0, 2.0)
                        b.add(Box((x + gap / 2, front + side * 0.3, back_top + h / 2), (gap / 2, 0.03, h / 2)),
                              "fence", b.jitter((0.50, 0.42, 0.32)))
                    x += gap
        else:  # a park: fence or hedge along the front, trees and bushes behind it
            kind = rng.random()
            for x0, x1 in b.segments(x_lo, x_hi):
                if kind < 0.4:
                    h = b.u(1.0, 2.0)
                    b.add(Box(((x0 + x1) / 2, front + side * 0.1, back_top + h / 2), ((x1 - x0) / 2, 0.03, h / 2)),
                          "fence", b.jitter((0.50, 0.42, 0.32)))
                elif kind < 0.7:
                    h = b.u(0.8, 1.6)
                    b.add(Box(((x0 + x1) / 2, front + side * 0.5, back_top + h / 2), ((x1 - x0) / 2, 0.4, h / 2)),
                          "vegetation", b.jitter((0.20, 0.38, 0.15), 0.2))
            for _ in range(int((x_hi - x_lo) / 6)):
                px, py = b.u(x_lo, x_hi), front + side * b.u(2.0, 20.0)
                if not b.in_gap(px - 3, px + 3):
                    (b.tree if rng.random() < 0.6 else b.bush)(px, py, back_top)

    speed = step / dt
    for lane in range(n_lanes):  # moving traffic; one speed per lane, so vehicles in a lane never collide
        yc = y0 + (lane + 0.5) * lane_w
        if lane == ego_lane:
            v, lo, hi = speed + b.u(0.5, 3.0), 12.0, 60.0  # only ahead of the ego, and pulling away
        else:
            v, lo, hi = b.u(5.0, 14.0) * (1 if lane < n_fwd else -1), x_lo + 10, x_hi - 10
        xs: List[float] = []
        for _ in range(int(rng.integers(0, 3))):
            x = b.u(lo, hi)
            if all(abs(x - o) > 14.0 for o in xs):
                xs.append(x)
                yaw = (0.0 if v > 0 else math.pi) + b.u(-0.02, 0.02)
                truck = rng.random() < 0.15
                b.vehicle(x, yc + b.u(-0.3, 0.3), yaw, b.vehicle_length(truck), truck, velocity=v)
    return Scene(seed, b.parts, gz, marks, step, dt, frames, int(rng.integers(1 << 31)))
