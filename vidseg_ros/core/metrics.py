"""Segmentation metrics: confusion matrix / IoU / mIoU, temporal consistency (ETC-style) and
accuracy as a function of the distance from the last keyframe.

mIoU convention: the mean of per-class IoU over the classes whose union (gt pixels + predicted pixels,
on non-ignored gt) is > 0 over everything accumulated; classes that never occur in either are NaN and
left out (the standard Cityscapes/CamVid evaluation, where every class occurs in the full set).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

IGNORE = 255


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix ``[gt, pred]``; gt == ignore_index is skipped and
    predictions outside [0, K) count as wrong (a miss for the gt class)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        if int(num_classes) <= 0:
            raise InputError(f'num_classes must be > 0, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)  # gt pixels predicted outside [0, K)

    def reset(self) -> None:
        self.mat[:] = 0
        self.missed[:] = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> 'ConfusionMatrix':
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise InputError(f'prediction shape {pred.shape} != ground truth shape {gt.shape}')
        k = self.num_classes
        g = gt.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        keep = (g != self.ignore_index) & (g >= 0) & (g < k)
        g, p = g[keep], p[keep]
        inside = (p >= 0) & (p < k)
        if not inside.all():
            self.missed += np.bincount(g[~inside], minlength=k)
            g, p = g[inside], p[inside]
        self.mat += np.bincount(g * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        if other.num_classes != self.num_classes:
            raise InputError(f'cannot merge confusion matrices of {self.num_classes} and {other.num_classes} classes')
        self.mat += other.mat
        self.missed += other.missed
        return self

    @property
    def total(self) -> int:
        return int(self.mat.sum() + self.missed.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU (float64, NaN where the class has an empty union)."""
        tp = np.diag(self.mat).astype(np.float64)
        gt_n = self.mat.sum(axis=1) + self.missed
        pred_n = self.mat.sum(axis=0)
        union = gt_n + pred_n - tp
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan')

    def pixel_accuracy(self) -> float:
        t = self.total
        return float(np.trace(self.mat) / t) if t else float('nan')

    def summary(self, class_names=None) -> dict:
        iou = self.iou()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {'miou': self.miou(), 'pixel_accuracy': self.pixel_accuracy(), 'pixels': self.total,
                'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)}}


class TemporalConsistency:
    """ETC-style temporal consistency: the t+1 prediction warped onto frame t with optical flow
    ``flow(frame_t, frame_t+1)`` is compared with the t prediction; mIoU over the sequence via one
    confusion matrix (pixels warped from outside the frame are ignored)."""

    def __init__(self, num_classes: int, flow_estimator, ignore_index: int = IGNORE):
        self.cm = ConfusionMatrix(num_classes, ignore_index)
        self.flow = flow_estimator
        self._prev = None  # (pred, frame)
        self.pairs = 0

    def reset(self) -> None:
        self.cm.reset()
        self._prev = None
        self.pairs = 0

    def update(self, pred: np.ndarray, frame: np.ndarray) -> None:
        """Feed the next (prediction, frame); compares with the previous one fed."""
        from .warp import warp_labels
        pred = np.asarray(pred, dtype=np.uint8)
        if self._prev is not None:
            p_prev, f_prev = self._prev
            flow = self.flow(f_prev, frame)
            warped = warp_labels(pred, flow)        # t+1 prediction on t's grid
            ref = np.where(warped == IGNORE, np.uint8(self.cm.ignore_index), p_prev)  # skip out-of-frame
            self.cm.update(warped, ref)              # t prediction plays the ground truth
            self.pairs += 1
        self._prev = (pred, frame)

    def miou(self) -> float:
        return self.cm.miou()


def temporal_consistency(preds, frames, flow_estimator, num_classes: int | None = None,
                         ignore_index: int = IGNORE, progress: bool = False) -> float:
    """TC mIoU of a prediction sequence (see :class:`TemporalConsistency`); ``num_classes`` defaults to
    1 + the largest id seen."""
    preds = list(preds)
    frames = list(frames)
    if len(preds) != len(frames):
        raise InputError(f'temporal_consistency: {len(preds)} predictions but {len(frames)} frames')
    if len(preds) < 2:
        raise InputError('temporal_consistency needs at least 2 frames')
    if num_classes is None:
        vals = [int(p[p != ignore_index].max()) for p in map(np.asarray, preds) if (p != ignore_index).any()]
        num_classes = (max(vals) + 1) if vals else 1
    tc = TemporalConsistency(num_classes, flow_estimator, ignore_index)
    pairs = zip(preds, frames)
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, total=len(preds), desc='temporal consistency', unit='frame')
    for p, f in pairs:
        tc.update(p, f)
    return tc.miou()


class AccuracyByDistance:
    """mIoU / pixel accuracy per distance (frames) from the last keyframe, plus the overall total."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.by_distance: dict[int, ConfusionMatrix] = {}
        self.overall = ConfusionMatrix(num_classes, ignore_index)

    def update(self, distance: int, pred: np.ndarray, gt: np.ndarray) -> None:
        d = int(distance)
        if d not in self.by_distance:
            self.by_distance[d] = ConfusionMatrix(self.num_classes, self.ignore_index)
        self.by_distance[d].update(pred, gt)
        self.overall.update(pred, gt)

    def miou_by_distance(self) -> dict:
        return {d: self.by_distance[d].miou() for d in sorted(self.by_distance)}

    def results(self) -> dict:
        return {'overall_miou': self.overall.miou(), 'overall_pixel_accuracy': self.overall.pixel_accuracy(),
                'by_distance': {d: {'miou': cm.miou(), 'pixel_accuracy': cm.pixel_accuracy(),
                                    'pixels': cm.total}
                                for d, cm in sorted(self.by_distance.items())}}

    def format_table(self) -> str:
        lines = ['distance  mIoU    pixacc  pixels']
        for d, cm in sorted(self.by_distance.items()):
            lines.append(f'{d:8d}  {_pct(cm.miou())}  {_pct(cm.pixel_accuracy())}  {cm.total}')
        lines.append(f'{"all":>8}  {_pct(self.overall.miou())}  {_pct(self.overall.pixel_accuracy())}  '
                     f'{self.overall.total}')
        return '\n'.join(lines)


def _pct(v) -> str:
    return '   n/a' if v is None or not np.isfinite(v) else f'{100 * v:6.2f}'


def format_iou_table(class_names, ious, miou: float | None = None) -> str:
    """Plain-text table of per-class IoU (in %) with the mIoU (computed with nanmean if not given)."""
    names = list(class_names)
    ious = np.asarray(ious, dtype=np.float64)
    if len(names) != len(ious):
        raise InputError(f'format_iou_table: {len(names)} class names but {len(ious)} IoU values')
    width = max([len(n) for n in names] + [4])
    lines = [f'{"class":<{width}}  IoU %']
    lines += [f'{n:<{width}}  {_pct(v)}' for n, v in zip(names, ious)]
    if miou is None:
        miou = float(np.nanmean(ious)) if np.isfinite(ious).any() else float('nan')
    lines.append(f'{"mIoU":<{width}}  {_pct(miou)}')
    return '\n'.join(lines)
