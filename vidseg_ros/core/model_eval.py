"""Evaluate a keyframe model against the teacher and human labels (``vidseg eval-model``).

Measures, in one run:
- mIoU against the Cityscapes-sequence pseudo labels (label ids -> train ids), on all snippets and
  on the held-out ones (not used to train the default model);
- mIoU on CamVid test against its human labels, on the 11 CamVid classes that map cleanly onto
  Cityscapes train ids (predictions are Cityscapes ids; other classes count as errors);
- agreement (mIoU) of the model with the teacher's own predictions;
- seconds per keyframe of model and teacher, interleaved frame by frame on the same images so the
  ratio is fair on a noisy machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .classes import CAMVID_TO_CITYSCAPES, CITYSCAPES, labelid_to_trainid
from .errors import InputError
from .io import read_image, write_json
from .metrics import ConfusionMatrix
from .paths import shared_dir

CAMVID_MAPPED = sorted(int(v) for v in set(CAMVID_TO_CITYSCAPES.tolist()) if v != 255)


def _resize_nearest(labels, shape_hw):
    import cv2
    if labels.shape == tuple(shape_hw):
        return labels
    return cv2.resize(labels, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_NEAREST)


def _full_res_labels(model, rgb):
    return _resize_nearest(model.segment(rgb).labels, rgb.shape[:2])


def evaluate(model, teacher, root: Path, holdout=('seq0003',), camvid_limit=None, cs_limit=None,
             progress=True):
    from tqdm import tqdm
    cs_all = ConfusionMatrix(19)
    cs_hold = ConfusionMatrix(19)
    cs_teacher = ConfusionMatrix(19)
    cs_teacher_all = ConfusionMatrix(19)
    agree = ConfusionMatrix(19)
    cam = ConfusionMatrix(19)
    cam_teacher = ConfusionMatrix(19)
    t_model, t_teacher = [], []

    def timed(m, rgb, acc):
        t0 = time.perf_counter()
        lab = _full_res_labels(m, rgb)
        acc.append(time.perf_counter() - t0)
        return lab

    cs_frames = []
    for seq in sorted((root / 'data' / 'cityscapes_seq').glob('seq*')):
        imgs = sorted(seq.glob('*.jpg'))[:cs_limit] if cs_limit else sorted(seq.glob('*.jpg'))
        cs_frames += [(seq.name, f) for f in imgs]
    if not cs_frames:
        raise InputError(f'no Cityscapes sequence frames under {root / "data" / "cityscapes_seq"}')
    for seq, f in tqdm(cs_frames, desc='cityscapes_seq', disable=not progress):
        rgb = read_image(f)
        gt_path = f.parent / 'pseudo_labels' / (f.stem + '.png')
        gt = labelid_to_trainid(read_image_gray(gt_path))
        p = timed(model, rgb, t_model)
        q = timed(teacher, rgb, t_teacher)
        p, q = _resize_nearest(p, gt.shape), _resize_nearest(q, gt.shape)
        cs_all.update(p, gt)
        cs_teacher_all.update(q, gt)
        if seq in holdout:
            cs_hold.update(p, gt)
            cs_teacher.update(q, gt)
        agree.update(p, q)
    cam_imgs = sorted((root / 'data' / 'camvid' / 'test').glob('*.png'))
    if camvid_limit is not None:
        cam_imgs = cam_imgs[::max(1, len(cam_imgs) // max(camvid_limit, 1))][:camvid_limit]
    for f in tqdm(cam_imgs, desc='camvid test', disable=not progress):
        rgb = read_image(f)
        gt = CAMVID_TO_CITYSCAPES[read_image_gray(root / 'data' / 'camvid' / 'testannot' / f.name)]
        cam.update(timed(model, rgb, []), gt)
        cam_teacher.update(timed(teacher, rgb, []), gt)

    def mapped_miou(cm):
        iou = cm.iou()[CAMVID_MAPPED]
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan')

    res = {
        'model': model.name, 'teacher': teacher.name,
        'cityscapes_seq_pseudo': {'model_miou': cs_all.miou(), 'teacher_miou': cs_teacher_all.miou(),
                                  'frames': len(cs_frames)},
        'cityscapes_seq_heldout': {'snippets': list(holdout), 'model_miou': cs_hold.miou(),
                                   'teacher_miou': cs_teacher.miou()},
        'agreement_with_teacher_miou': agree.miou(),
        'camvid_test_mapped': {'classes': [CITYSCAPES.names[i] for i in CAMVID_MAPPED],
                               'model_miou': mapped_miou(cam), 'teacher_miou': mapped_miou(cam_teacher),
                               'images': len(cam_imgs)},
        'speed': {'model_s_per_keyframe_median': float(np.median(t_model)),
                  'teacher_s_per_keyframe_median': float(np.median(t_teacher)),
                  'speedup': float(np.median(t_teacher) / np.median(t_model)),
                  'input_size_model': list(model.input_size),
                  'input_size_teacher': list(teacher.input_size),
                  'backend_model': getattr(model, 'backend', '?'),
                  'backend_teacher': getattr(teacher, 'backend', '?')},
        'per_class_iou_cityscapes_seq': cs_all.summary(CITYSCAPES.names)['iou'],
        'per_class_iou_cityscapes_seq_teacher': cs_teacher_all.summary(CITYSCAPES.names)['iou'],
    }
    return res


def read_image_gray(path):
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputError(f'cannot read label image {path}')
    return img


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg eval-model', description=__doc__.splitlines()[0])
    p.add_argument('--model', default='default')
    p.add_argument('--teacher', default='espnetv2_s2.0')
    p.add_argument('--backend', default='auto')
    p.add_argument('--holdout', nargs='*', default=['seq0003'])
    p.add_argument('--camvid-limit', type=int, default=None, help='evaluate on N CamVid test images')
    p.add_argument('--cs-limit', type=int, default=None, help='frames per Cityscapes snippet')
    p.add_argument('--out', default='out/model_eval.json')
    a = p.parse_args(argv)
    from .models import load_model
    model = load_model(a.model, backend=a.backend)
    teacher = load_model(a.teacher, backend=a.backend)
    res = evaluate(model, teacher, shared_dir(), tuple(a.holdout), a.camvid_limit, a.cs_limit)
    write_json(a.out, res)
    s = res['speed']
    print(f"\nmodel {res['model']} vs teacher {res['teacher']}")
    print('| set | model mIoU | teacher mIoU |\n|---|---|---|')
    for key in ('cityscapes_seq_pseudo', 'cityscapes_seq_heldout', 'camvid_test_mapped'):
        r = res[key]
        print(f"| {key} | {100 * r['model_miou']:.1f} | {100 * r['teacher_miou']:.1f} |")
    print(f"agreement with teacher (mIoU): {100 * res['agreement_with_teacher_miou']:.1f}")
    print(f"speed: model {1000 * s['model_s_per_keyframe_median']:.0f} ms, teacher "
          f"{1000 * s['teacher_s_per_keyframe_median']:.0f} ms per keyframe -> {s['speedup']:.2f}x")
    print('class            model  teacher')
    for n in CITYSCAPES.names:
        u, v = res['per_class_iou_cityscapes_seq'][n], res['per_class_iou_cityscapes_seq_teacher'][n]
        print(f"{n:<15} {'-' if u is None else f'{100 * u:5.1f}':>6} {'-' if v is None else f'{100 * v:5.1f}':>8}")
    print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
