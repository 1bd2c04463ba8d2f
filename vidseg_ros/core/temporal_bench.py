"""EVS Table 1 for this project: per-class IoU of per-frame segmentation, plain warping and each
temporal module at keyframe intervals S (default 2 and 5) on a held-out Cityscapes snippet.

    python -m vidseg_ros.core.temporal_bench [--seq seq0003] [--size 512x256] [--intervals 2 5]

Ground truth: the snippet's pseudo labels (Cityscapes label ids -> train ids), resized (nearest) to
the working size, where everything is evaluated. The keyframe network runs (torch backend) on every
frame once; its outputs serve as per-frame results and as keyframe semantics for every mode; DIS
flows (native resolution, as in the pipeline) are computed once. Per mode: mIoU over all frames and
over propagated frames only, the recovered share of the warping drop
``(mIoU_mode - mIoU_warp) / (mIoU_per_frame - mIoU_warp)``, and the per-frame cost of the module
(refine step; for caching the whole non-keyframe pass incl. its flow) relative to one keyframe
network pass ('cost/kf'), the same for the whole propagated frame (flow pair + warp + IAM + module:
'frame/kf'); 'agree-net': pixel agreement of the propagated frames with the keyframe network's
own labels on them (what the modules are trained to reproduce); 'mIoU-gt': mean over the classes
present in the pseudo labels (classes only predicted count as IoU 0 in 'mIoU'). Costs are measured
after the accuracy runs in interleaved rounds on one frame (``measure_costs``). Writes a text table and a JSON file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .classes import CITYSCAPES, labelid_to_trainid
from .errors import ConfigError, InputError
from .paths import shared_dir

PROP_MODES = ('warp', 'iam-lowres', 'refiner', 'grfp', 'davss')
CACHE_MODES = ('cache1', 'cache2')


def load_snippet(root: Path, seq: str, size, frames: int):
    d = root / 'data' / 'cityscapes_seq' / seq
    files = sorted(d.glob('*_leftImg8bit.*'))[:frames]
    if not files:
        raise InputError(f'no frames in {d}')
    imgs, gts = [], []
    for f in files:
        bgr = cv2.imread(str(f))
        lab = cv2.imread(str(d / 'pseudo_labels' / (f.stem + '.png')), cv2.IMREAD_GRAYSCALE)
        if bgr is None or lab is None:
            raise InputError(f'cannot read {f} or its pseudo label')
        imgs.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA))
        gts.append(cv2.resize(labelid_to_trainid(lab), size, interpolation=cv2.INTER_NEAREST))
    return imgs, gts


def _iou_row(cm):
    iou = cm.iou()
    present = (cm.mat.sum(axis=1) + cm.missed) > 0
    return {'miou': cm.miou(), 'miou_gt': float(np.nanmean(iou[present])) if present.any() else None,
            'iou': [None if np.isnan(v) else float(v) for v in iou]}


def measure_costs(model, modules: dict, imgs, sems, bwd, fwd, flow, rounds: int = 7) -> dict:
    """Per-frame seconds of each module and its ratio to one keyframe network pass, measured in
    interleaved rounds on the same frame (so that load changes on a shared machine hit all alike).
    Propagator modes: the module call, and the whole propagated frame (flow pair + warp + IAM +
    module); caching: its whole non-keyframe ``process`` (incl. its flow)."""
    from .propagation import Propagator
    t = 2 if len(imgs) > 2 else len(imgs) - 1
    if t < 1:
        raise InputError('cost measurement needs at least 2 frames')
    p = Propagator()
    p.set_keyframe(t - 1, sems[t - 1])
    p.step(t - 1)
    out = p.step(t, bwd[t], fwd[t])
    warped, mask, image, prev = out.semantics, out.mask, imgs[t], imgs[t - 1]
    g0, g1 = (cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (prev, image))
    sec = {m: [] for m in modules}
    ratio = {m: [] for m in modules}
    frame_ratio = {m: [] for m in modules}
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        model.segment(image)
        kf = time.perf_counter() - t0
        t0 = time.perf_counter()
        flow.forward_backward(g0, g1, native=True)
        fl = time.perf_counter() - t0
        p = Propagator()
        p.set_keyframe(t - 1, sems[t - 1])
        p.step(t - 1)
        t0 = time.perf_counter()
        p.step(t, bwd[t], fwd[t])
        wi = time.perf_counter() - t0
        for m, mod in modules.items():
            if mod is None:
                dt = 0.0
            elif hasattr(mod, 'process'):
                mod.process(prev, keyframe=True)
                t0 = time.perf_counter()
                mod.process(image, keyframe=False)
                dt = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                if hasattr(mod, 'refine'):
                    mod.refine(image, warped, mask, prev_image=prev, flow_bwd=bwd[t])
                else:
                    mod(image, warped, mask)
                dt = time.perf_counter() - t0
            if r == 0:
                continue   # warm-up round
            sec[m].append(dt)
            ratio[m].append(dt / kf)
            frame_ratio[m].append((dt if hasattr(mod, 'process') else fl + wi + dt) / kf)
    med = lambda v: float(np.median(v)) if v else 0.0  # noqa: E731
    return {m: {'module_s': med(sec[m]), 'cost_rel': med(ratio[m]), 'frame_rel': med(frame_ratio[m])}
            for m in modules}


def run(args) -> dict:
    from tqdm import tqdm

    from .flow import FlowEstimator
    from .metrics import ConfusionMatrix
    from .models import load_model
    from .propagation import semantics_from_segmentation
    from .temporal import TemporalPropagator, make_temporal_module
    from .temporal_train import default_teacher, parse_size

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    root = Path(args.shared) if args.shared else shared_dir()
    spec = args.model if args.model != 'auto' else default_teacher(size)
    modes = list(args.modes)
    for m in modes:
        if m not in PROP_MODES + CACHE_MODES:
            raise ConfigError(f'unknown mode {m!r} (known: {", ".join(PROP_MODES + CACHE_MODES)})')
    imgs, gts = load_snippet(root, args.seq, size, args.frames)
    n = len(imgs)
    model = load_model(spec, backend='torch', input_size=size, device=args.device)
    k = CITYSCAPES.num_classes
    cmap = np.asarray(model.output_to_class, np.uint8)

    sems, kf_times, pf_labels = [], [], []
    cm_pf = ConfusionMatrix(k)
    model.segment(imgs[0])  # warm-up
    for i in tqdm(range(n), desc='keyframe network', mininterval=5):
        t0 = time.perf_counter()
        seg = model.segment(imgs[i])
        kf_times.append(time.perf_counter() - t0)
        sems.append(semantics_from_segmentation(seg, cmap, size))
        cm_pf.update(seg.labels, gts[i])
        pf_labels.append(seg.labels)
    kf_s = float(np.median(kf_times))
    flow = FlowEstimator('dis', preset=args.flow_preset)
    bwd, fwd = [None], [None]
    grays = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in imgs]
    flow_times = []
    for i in range(1, n):
        t0 = time.perf_counter()
        f_fwd, f_bwd = flow.forward_backward(grays[i - 1], grays[i], native=True)
        flow_times.append(time.perf_counter() - t0)
        bwd.append(f_bwd)
        fwd.append(f_fwd)

    res = {'config': {'seq': args.seq, 'frames': n, 'size': list(size), 'model': spec, 'device': args.device,
                      'flow': flow.describe(), 'intervals': list(args.intervals), 'threads':
                      torch.get_num_threads(), 'weights_dir': args.weights_dir},
           'keyframe_network_s': kf_s, 'flow_pair_s': float(np.median(flow_times)) if flow_times else 0.0, 'per_frame': _iou_row(cm_pf), 'intervals': {}}
    wdir = Path(args.weights_dir) if args.weights_dir else None
    built = {}
    for S in args.intervals:
        rows = {}
        for mode in modes:
            cm_all, cm_prop, cm_net = ConfusionMatrix(k), ConfusionMatrix(k), ConfusionMatrix(k)
            costs, frame_costs = [], []
            weights = None
            if wdir is not None and mode in ('refiner', 'grfp', 'davss'):
                weights = wdir / f'{mode}.pt'
            module = make_temporal_module(mode, model, weights=weights, device=args.device, schedule=S)
            built[mode] = module
            if mode in CACHE_MODES:
                for i in tqdm(range(n), desc=f'S={S} {mode}', mininterval=5):
                    r = module.process(imgs[i], keyframe=(i % S == 0))
                    cm_all.update(r.labels, gts[i])
                    if not r.is_keyframe:
                        cm_prop.update(r.labels, gts[i])
                        cm_net.update(r.labels, pf_labels[i])
                        costs.append(r.timings['total'])
                        frame_costs.append(r.timings['total'])
            else:
                prop = TemporalPropagator(refiner=module)
                for i in tqdm(range(n), desc=f'S={S} {mode}', mininterval=5):
                    if i % S == 0:
                        prop.set_keyframe(i, sems[i])
                        out = prop.step(i, None, None, imgs[i] if module is not None else None)
                    else:
                        out = prop.step(i, bwd[i], fwd[i], imgs[i] if module is not None else None)
                        costs.append(out.timings.get('refine', 0.0))
                        frame_costs.append(res['flow_pair_s'] + sum(out.timings.get(x, 0.0)
                                                                    for x in ('warp', 'iam', 'refine')))
                        cm_prop.update(out.labels, gts[i])
                        cm_net.update(out.labels, pf_labels[i])
                    cm_all.update(out.labels, gts[i])
            row = _iou_row(cm_all)
            row['miou_propagated'] = cm_prop.miou()
            row['agree_per_frame'] = cm_net.pixel_accuracy()   # propagated frames vs the network's labels
            # in-loop timings (informative only; the table uses the interleaved measurement below)
            row['inloop_module_s'] = float(np.median(costs)) if costs else 0.0
            row['inloop_frame_s'] = float(np.median(frame_costs)) if frame_costs else 0.0
            rows[mode] = row
        if 'warp' in rows:
            drop = res['per_frame']['miou'] - rows['warp']['miou']
            for row in rows.values():
                row['recovered'] = (row['miou'] - rows['warp']['miou']) / drop if drop > 1e-9 else None
        res['intervals'][str(S)] = rows
    costs = measure_costs(model, built, imgs, sems, bwd, fwd, flow, rounds=args.cost_rounds)
    res['costs'] = costs
    for rows in res['intervals'].values():
        for mode, row in rows.items():
            row.update(costs[mode])
    return res


def _p(v):
    return '   -  ' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{100 * v:6.1f}'


def format_table(res: dict) -> str:
    c = res['config']
    lines = [f"Temporal modules on {c['seq']} ({c['frames']} frames, {c['size'][0]}x{c['size'][1]}, "
             f"keyframe network {c['model']} {1000 * res['keyframe_network_s']:.0f} ms/frame, "
             f"{c['threads']} thread(s)); mIoU vs pseudo labels",
             f"{'method':<16}{'mIoU':>7}{'mIoU-gt':>8}{'mIoU-prop':>10}{'recovered':>10}{'cost/kf':>9}{'frame/kf':>9}{'agree-net':>10}"]
    lines.append(f"{'per-frame':<16}{_p(res['per_frame']['miou'])}{_p(res['per_frame']['miou_gt']):>8}{'':>10}{'':>10}{'1.000':>9}{'1.000':>9}{'100.0':>10}")
    for S, rows in res['intervals'].items():
        for mode, r in rows.items():
            rec = r.get('recovered')
            rec_s = '      -   ' if rec is None or mode == 'warp' else f'{100 * rec:9.0f}%'
            lines.append(f"{'S=' + S + ' ' + mode:<16}{_p(r['miou'])}{_p(r['miou_gt']):>8}{_p(r['miou_propagated']):>10}"
                         f"{rec_s:>10}{r['cost_rel']:9.3f}{r['frame_rel']:9.3f}{_p(r['agree_per_frame']):>10}")
    lines.append('')
    names = CITYSCAPES.names
    cols = [('per-frame', res['per_frame'])] + [(f'S{S} {m}', r) for S, rows in res['intervals'].items()
                                                 for m, r in rows.items()]
    lines.append('per-class IoU (%)')
    lines.append(f"{'class':<14}" + ''.join(f'{h[:10]:>11}' for h, _ in cols))
    for j, nm in enumerate(names):
        lines.append(f'{nm[:13]:<14}' + ''.join(f'{_p(r["iou"][j]):>11}' for _, r in cols))
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='temporal_bench', description=__doc__.splitlines()[0])
    p.add_argument('--seq', default='seq0003')
    p.add_argument('--size', default='512x256', help='working size WxH (= keyframe network input)')
    p.add_argument('--model', default='auto', help='keyframe network (auto: s2.0 at the size)')
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--intervals', type=int, nargs='+', default=[2, 5])
    p.add_argument('--modes', nargs='+', default=list(PROP_MODES + CACHE_MODES))
    p.add_argument('--flow-preset', default='ultrafast')
    p.add_argument('--weights-dir', default=None, help='temporal weights (default: packaged)')
    p.add_argument('--device', default='cpu', help='cpu or cuda (network and modules)')
    p.add_argument('--cost-rounds', type=int, default=7, help='interleaved timing rounds')
    p.add_argument('--threads', type=int, default=1, help='torch threads (0 = leave as is)')
    p.add_argument('--shared', default=None)
    p.add_argument('--out', default='runs/temporal_bench.json')
    args = p.parse_args(argv)
    if 'warp' not in args.modes:
        args.modes = ['warp'] + list(args.modes)
    res = run(args)
    table = format_table(res)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix('.txt').write_text(table + '\n')
    print(f'wrote {out} and {out.with_suffix(".txt")}')
    return 0


if __name__ == '__main__':   # same as `vidseg bench-temporal` (one-line errors, exit 2)
    import sys
    from vidseg_ros.cli import main as _vidseg
    raise SystemExit(_vidseg(['bench-temporal'] + sys.argv[1:]))
