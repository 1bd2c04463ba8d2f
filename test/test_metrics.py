"""Confusion matrix / IoU, temporal consistency and accuracy-by-distance."""
import cv2
import numpy as np
import pytest

from vidseg_ros.core.errors import InputError
from vidseg_ros.core.flow import FlowEstimator
from vidseg_ros.core.metrics import (AccuracyByDistance, ConfusionMatrix, TemporalConsistency,
                                     format_iou_table, temporal_consistency)


def test_confusion_matrix_iou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 7]], np.uint8)  # 7 is outside [0, 4): a miss
    cm = ConfusionMatrix(4).update(pred, gt)
    # class 0: tp 1, gt 2, pred 2 (one at ignored gt is skipped) -> 1/(2+2-1)
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3)
    assert iou[1] == pytest.approx(2 / 4)   # tp 2, gt 3, pred 3 -> 2/4
    assert iou[2] == pytest.approx(1 / 2)   # tp 1, gt 2, pred 1
    assert np.isnan(iou[3])                 # never in gt nor pred: left out of the mean
    assert cm.miou() == pytest.approx(np.mean([1 / 3, 1 / 2, 1 / 2]))
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    assert cm.total == 7
    other = ConfusionMatrix(4).update(gt, gt)
    merged = ConfusionMatrix(4).merge(cm).merge(other)
    assert merged.total == 14
    s = merged.summary(['a', 'b', 'c', 'd'])
    assert s['iou']['d'] is None and 0 < s['miou'] < 1


def test_confusion_matrix_errors():
    with pytest.raises(InputError):
        ConfusionMatrix(3).update(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(InputError):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    assert np.isnan(ConfusionMatrix(3).miou())


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, (50, 60)).astype(np.uint8)
    cm = ConfusionMatrix(19).update(gt, gt)
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0


def _scene(shift):
    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (0, 0), 2)
    lab = np.zeros((96, 128), np.uint8)
    lab[:, 64:] = 1
    lab[30:60, 20:50] = 2
    m = np.float32([[1, 0, shift], [0, 1, 0]])
    warp = lambda a, interp: cv2.warpAffine(a, m, (128, 96), flags=interp, borderMode=cv2.BORDER_REFLECT)
    return warp(img, cv2.INTER_LINEAR), warp(lab, cv2.INTER_NEAREST)


def test_temporal_consistency_moving_scene():
    frames, labels = zip(*[_scene(2 * i) for i in range(4)])
    est = FlowEstimator('dis', 'medium')
    # labels that move with the scene are consistent, labels frozen in place are not
    tc_good = temporal_consistency(labels, frames, est, num_classes=3)
    tc_bad = temporal_consistency([labels[0]] * 4, frames, est, num_classes=3)
    assert tc_good > 0.9
    assert tc_bad < tc_good - 0.03
    acc = TemporalConsistency(3, est)
    for p, f in zip(labels, frames):
        acc.update(p, f)
    assert acc.pairs == 3 and acc.miou() == pytest.approx(tc_good)
    with pytest.raises(InputError):
        temporal_consistency(labels[:1], frames[:1], est)


def test_accuracy_by_distance_and_tables():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 5:] = 1
    acc = AccuracyByDistance(2)
    acc.update(0, gt, gt)
    wrong = gt.copy()
    wrong[:, 5:7] = 0
    acc.update(3, wrong, gt)
    acc.update(3, gt, gt)
    res = acc.miou_by_distance()
    assert res[0] == 1.0 and res[3] < 1.0
    assert set(acc.results()['by_distance']) == {0, 3}
    table = acc.format_table()
    assert 'all' in table and '100.00' in table
    t = format_iou_table(['road', 'car'], [0.5, float('nan')])
    assert 'road' in t and '50.00' in t and 'n/a' in t and 'mIoU' in t
    with pytest.raises(InputError):
        format_iou_table(['a'], [0.1, 0.2])


def test_temporal_consistency_ignores_out_of_frame():
    class ShiftFlow:  # stands in for a FlowEstimator: constant 10 px to the right
        def __call__(self, a, b):
            f = np.zeros(a.shape[:2] + (2,), np.float32)
            f[..., 0] = 10
            return f
    lab = np.repeat(np.arange(40, dtype=np.uint8)[:, None] // 10, 64, axis=1)  # constant along x
    frames = [np.zeros((40, 64, 3), np.uint8)] * 3
    assert temporal_consistency([lab] * 3, frames, ShiftFlow(), num_classes=4) == 1.0
    moved = [lab, np.roll(lab, 5, axis=0), lab]
    assert temporal_consistency(moved, frames, ShiftFlow(), num_classes=4) < 0.9
