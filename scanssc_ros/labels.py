"""Label sets: class names, RGB colours and class frequencies.

Facts taken from the official SemanticKITTI / SSCBench-KITTI-360 label configs (colours converted from their
BGR ``color_map`` through ``learning_map_inv``). Frequencies are the ones the ScanSSC configs use for class
weights. Index 0 is always "empty"; 255 is "unknown / ignore" in every grid we write.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

EMPTY = 0
IGNORE = 255


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: Tuple[str, ...]
    colors_rgb: Tuple[Tuple[int, int, int], ...]
    frequencies: Tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def color_table(self) -> np.ndarray:
        """(256, 3) uint8 lookup: class id -> RGB; ids beyond the set (255 = unknown) are grey."""
        table = np.full((256, 3), 128, np.uint8)
        table[: self.num_classes] = np.asarray(self.colors_rgb, np.uint8)
        return table

    def class_weights(self) -> np.ndarray:
        """Cross-entropy weights 1 / ln(f + 1e-3) as in the ScanSSC configs."""
        f = np.asarray(self.frequencies, np.float64)
        return (1.0 / np.log(f + 1e-3)).astype(np.float32)


SEMANTIC_KITTI = LabelSet(
    name="semantickitti",
    classes=(
        "empty", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
        "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation",
        "trunk", "terrain", "pole", "traffic-sign",
    ),
    colors_rgb=(
        (0, 0, 0), (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (0, 0, 255),
        (255, 30, 30), (255, 40, 200), (150, 30, 90), (255, 0, 255), (255, 150, 255), (75, 0, 75),
        (175, 0, 75), (255, 200, 0), (255, 120, 50), (0, 175, 0), (135, 60, 0), (150, 240, 80),
        (255, 240, 150), (255, 0, 0),
    ),
    frequencies=(
        5.41773033e9, 1.5783539e7, 1.25136e5, 1.18809e5, 6.46799e5, 8.21951e5, 2.62978e5, 2.83696e5,
        2.0475e5, 6.1688703e7, 4.502961e6, 4.488365e7, 2.269923e6, 5.6840218e7, 1.5719652e7,
        1.58442623e8, 2.061623e6, 3.6970522e7, 1.151988e6, 3.34146e5,
    ),
)

KITTI360 = LabelSet(
    name="kitti360",
    classes=(
        "empty", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "road", "parking",
        "sidewalk", "other-ground", "building", "fence", "vegetation", "terrain", "pole", "traffic-sign",
        "other-structure", "other-object",
    ),
    colors_rgb=(
        (0, 0, 0), (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (0, 0, 255),
        (255, 30, 30), (255, 0, 255), (255, 150, 255), (75, 0, 75), (175, 0, 75), (255, 200, 0),
        (255, 120, 50), (0, 175, 0), (150, 240, 80), (255, 240, 150), (255, 0, 0), (255, 150, 0),
        (50, 255, 255),
    ),
    frequencies=(
        2264087502, 20098728, 104972, 96297, 1149426, 4051087, 125103, 105540713, 16292249, 45297267,
        14454132, 110397082, 6766219, 295883213, 50037503, 1561069, 406330, 30516166, 1950115,
    ),
)

LABEL_SETS: Dict[str, LabelSet] = {s.name: s for s in (SEMANTIC_KITTI, KITTI360)}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; known: {sorted(LABEL_SETS)}") from None
