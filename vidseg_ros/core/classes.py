"""Class sets (names, colour palettes, ignore label) and the Cityscapes label-id -> train-id map."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

IGNORE = 255


@dataclass(frozen=True)
class ClassSet:
    """A semantic class set: ``names[i]`` is class id ``i``; ``ignore_index`` marks void pixels."""

    name: str
    names: tuple
    palette: np.ndarray = field(repr=False)  # (K, 3) uint8 RGB
    ignore_index: int = IGNORE

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {'name': self.name, 'names': list(self.names),
                'palette': self.palette.tolist(), 'ignore_index': self.ignore_index}


CITYSCAPES = ClassSet(
    'cityscapes',
    ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
     'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
     'motorcycle', 'bicycle'),
    np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
              [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
              [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
              [0, 80, 100], [0, 0, 230], [119, 11, 32]], dtype=np.uint8),
)

# CamVid-11 (SegNet split). The dataset's void id 11 is mapped to IGNORE when ground truth is read.
CAMVID = ClassSet(
    'camvid',
    ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign', 'fence', 'car',
     'pedestrian', 'bicyclist'),
    np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
              [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
              [0, 128, 192]], dtype=np.uint8),
)
CAMVID_VOID = 11

CLASS_SETS = {'cityscapes': CITYSCAPES, 'camvid': CAMVID}


def get_class_set(name) -> ClassSet:
    if isinstance(name, ClassSet):
        return name
    key = str(name).lower()
    if key not in CLASS_SETS:
        raise ConfigError(f'unknown class set {name!r} (known: {", ".join(CLASS_SETS)})')
    return CLASS_SETS[key]


# Cityscapes label id (0..33, -1 = license plate) -> train id; 255 = ignored in evaluation.
# (cityscapesscripts.helpers.labels, the standard table.)
_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                       24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABELID_TO_TRAINID_LUT = np.full(256, IGNORE, dtype=np.uint8)
for _lid, _tid in _LABELID_TO_TRAINID.items():
    LABELID_TO_TRAINID_LUT[_lid] = _tid
TRAINID_TO_LABELID = np.array([lid for lid, _ in sorted(_LABELID_TO_TRAINID.items(), key=lambda kv: kv[1])],
                              dtype=np.uint8)

# CamVid-11 -> Cityscapes train id where the class maps cleanly (255 otherwise). Bicyclist (10) covers
# both Cityscapes rider and bicycle, so it has no clean image and is ignored.
CAMVID_TO_CITYSCAPES = np.full(256, IGNORE, dtype=np.uint8)
for _cv, _cs in {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11}.items():
    CAMVID_TO_CITYSCAPES[_cv] = _cs


def labelid_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id image (uint8) to train ids (uint8, 255 = ignore)."""
    return LABELID_TO_TRAINID_LUT[np.asarray(label_ids, dtype=np.uint8)]


def camvid_gt_to_ids(gt: np.ndarray) -> np.ndarray:
    """CamVid annotation (0..10 classes, 11 void) -> ids with void as 255."""
    out = np.asarray(gt, dtype=np.uint8).copy()
    out[out >= CAMVID_VOID] = IGNORE
    return out


def colorize(labels: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """Palette image (H, W, 3) uint8 RGB; ignore and unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:class_set.num_classes] = class_set.palette
    return lut[np.asarray(labels, dtype=np.uint8)]
