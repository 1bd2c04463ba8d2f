"""Limits of the flow approach (after Lup & Nedevschi) on a synthetic drive with exact labels and flow.

The keyframe's *true* labels (100% mIoU at distance 0) are propagated to the next ``max_distance`` frames
with (a) the exact flow and (b) OpenCV DIS presets, and mIoU against the true labels is measured per
distance from the keyframe. With exact flow the loss comes only from what flow cannot express
(disocclusions, objects entering the view, nearest-neighbour resampling): at a disoccluded pixel the
exact flow points at the occluder in the previous frame, so exact flow is not an upper bound for label
propagation (a photometric estimator often lands on visible content of the right class instead).
The one-step diagnostic splits label errors into co-visible and not co-visible pixels.

Propagation modes: ``chain`` warps the previous frame's propagated labels with flow(t, t-1) every frame
(what the propagation pipeline does); ``compose`` composes flow(t, t-1) into flow(t, k) and warps the
keyframe labels once (``compose_flows``, no repeated nearest-neighbour resampling).

Usage: ``python -m vidseg_ros.core.synth_analysis [--keyframes 4] [--max-distance 15] [--out DIR]``
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


from .classes import CITYSCAPES
from .errors import ConfigError
from .flow import FlowEstimator, compose_flows
from .metrics import AccuracyByDistance
from .synth import SyntheticDrive
from .warp import warp_image, warp_labels

DIS_PRESETS = ('ultrafast', 'fast', 'medium')


def propagation_limits(seed=0, size=(640, 360), fps=10.0, keyframes=4, max_distance=15, mode='chain',
                       presets=DIS_PRESETS, drop=0.05, progress=True) -> dict:
    """mIoU vs distance for ground-truth flow and each DIS preset; see the module docstring."""
    if mode not in ('chain', 'compose'):
        raise ConfigError(f"mode must be 'chain' or 'compose', got {mode!r}")
    if int(keyframes) < 1 or int(max_distance) < 1:
        raise ConfigError(f'keyframes and max_distance must be >= 1, got {keyframes}, {max_distance}')
    for p in presets:
        FlowEstimator('dis', p)  # validates the preset name
    span = int(max_distance) + 1
    n_frames = int(keyframes) * span
    drive = SyntheticDrive(seed=seed, size=size, fps=fps, duration_s=max(60.0, n_frames / float(fps)))
    methods = ['gt'] + [f'dis_{p}' for p in presets]
    estimators = {f'dis_{p}': FlowEstimator('dis', p) for p in presets}
    acc = {m: AccuracyByDistance(CITYSCAPES.num_classes) for m in methods}
    flow_seconds = {m: 0.0 for m in estimators}
    step_err = {m: [0, 0] for m in methods}  # one-step label errors on [co-visible, not co-visible] pixels
    n_pix = [0, 0]
    it = range(int(keyframes))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_frames, desc='synth analysis', unit='frame')
    t_render = 0.0
    for kf in it:
        k = kf * span
        t0 = time.perf_counter()
        key = drive.render(k)
        t_render += time.perf_counter() - t0
        prev_rgb, prev_lab, prev_ff = key[0], key[1], key[3]
        state = {m: key[1].copy() for m in methods}          # chain: labels at t-1
        acc_flow = {m: None for m in methods}                 # compose: flow(t-1, k)
        if bar is not None:
            bar.update(1)
        for d in range(1, span):
            t0 = time.perf_counter()
            rgb, lab, fb, ff = drive.render(k + d)
            t_render += time.perf_counter() - t0
            # pixels of t visible in t-1: the exact forward flow of t-1 leads back (within 0.5 px)
            covis = np.linalg.norm(fb + warp_image(prev_ff, fb), axis=2) < 0.5
            n_pix[0] += covis.sum()
            n_pix[1] += (~covis).sum()
            for m in methods:
                if m == 'gt':
                    f = fb
                else:
                    t1 = time.perf_counter()
                    f = estimators[m](rgb, prev_rgb)  # flow(t, t-1)
                    flow_seconds[m] += time.perf_counter() - t1
                wrong = warp_labels(prev_lab, f) != lab  # one step from the true labels of t-1
                step_err[m][0] += (wrong & covis).sum()
                step_err[m][1] += (wrong & ~covis).sum()
                if mode == 'chain':
                    state[m] = warp_labels(state[m], f)
                    pred = state[m]
                else:
                    acc_flow[m] = f if acc_flow[m] is None else compose_flows(f, acc_flow[m])
                    pred = warp_labels(key[1], acc_flow[m])
                acc[m].update(d, pred, lab)
            prev_rgb, prev_lab, prev_ff = rgb, lab, ff
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    curves = {m: {d: float(v) for d, v in acc[m].miou_by_distance().items()} for m in methods}
    limit = {}
    for m in methods:
        below = [d for d, v in sorted(curves[m].items()) if v < 1.0 - drop]
        limit[m] = below[0] if below else None  # first distance more than `drop` below the keyframe (100%)
    pix = {m: {d: r['pixel_accuracy'] for d, r in acc[m].results()['by_distance'].items()} for m in methods}
    return {
        'seed': seed, 'size': list(drive.size), 'fps': drive.fps, 'keyframes': int(keyframes),
        'max_distance': int(max_distance), 'mode': mode, 'drop_points': 100 * drop,
        'keyframe_miou': 1.0, 'miou_by_distance': curves, 'pixel_accuracy_by_distance': pix,
        'distance_5pt_drop': limit,
        'class_iou_by_distance': {m: {d: {CITYSCAPES.names[c]: float(v) for c, v in enumerate(cm.iou())
                                          if np.isfinite(v)}
                                      for d, cm in sorted(acc[m].by_distance.items())} for m in methods},
        'one_step': {'not_covisible_fraction': n_pix[1] / max(1, sum(n_pix)),
                     'error_covisible': {m: int(e[0]) / max(1, n_pix[0]) for m, e in step_err.items()},
                     'error_not_covisible': {m: int(e[1]) / max(1, n_pix[1]) for m, e in step_err.items()}},
        'flow_ms_per_pair': {m: 1000 * s / (int(keyframes) * int(max_distance)) for m, s in flow_seconds.items()},
        'render_ms_per_frame': 1000 * t_render / n_frames,
    }


def format_table(res: dict) -> str:
    """Two blocks: mIoU and pixel accuracy (%) per distance, then the -5 point distance per method."""
    methods = list(res['miou_by_distance'])
    w = max(10, max(len(m) for m in methods) + 1)
    lines = []
    for key, title in (('miou_by_distance', 'mIoU'), ('pixel_accuracy_by_distance', 'pixel accuracy')):
        lines += [f'{title} (%) vs true labels, by distance from the keyframe (keyframe = 100), mode {res["mode"]}',
                  'dist ' + ''.join(f'{m:>{w}}' for m in methods)]
        for d in range(1, res['max_distance'] + 1):
            lines.append(f'{d:4d} ' + ''.join(f'{100 * res[key][m][d]:{w}.2f}' for m in methods))
    lim = res['distance_5pt_drop']
    lines.append(f'first distance with mIoU < {100 - res["drop_points"]:g}: '
                 + ', '.join(f'{m} {lim[m] if lim[m] is not None else ">" + str(res["max_distance"])}'
                             for m in methods))
    for d in sorted({1, res['max_distance']}):
        ci = res['class_iou_by_distance']['gt'][d]
        lines.append(f'gt-flow class IoU % at distance {d}: '
                     + ', '.join(f'{n} {100 * v:.0f}' for n, v in ci.items()))
    o = res['one_step']
    lines.append(f'one step from true labels: {100 * o["not_covisible_fraction"]:.1f}% of pixels not visible in t-1 '
                 '(disoccluded or entering); label error % on co-visible / not co-visible pixels: '
                 + ', '.join(f'{m} {100 * o["error_covisible"][m]:.2f}/{100 * o["error_not_covisible"][m]:.1f}'
                             for m in methods))
    return '\n'.join(lines)


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m, curve in res['miou_by_distance'].items():
        ds = [0] + sorted(curve)
        ax.plot(ds, [100.0] + [100 * curve[d] for d in ds[1:]], marker='o', ms=3,
                label=m.replace('_', ' ') + (' (exact)' if m == 'gt' else ''))
    ax.axhline(100 - res['drop_points'], color='gray', ls='--', lw=0.8, label=f'-{res["drop_points"]:g} points')
    ax.set_xlabel('distance from keyframe (frames)')
    ax.set_ylabel('mIoU (%) vs true labels')
    ax.set_title(f'Propagating true keyframe labels ({res["mode"]}, {res["fps"]:g} fps, '
                 f'{res["size"][0]}x{res["size"][1]})', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg synth-analysis', description=__doc__.split('\n')[0])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--size', default='640x360', help='WxH (default 640x360)')
    p.add_argument('--fps', type=float, default=10.0)
    p.add_argument('--keyframes', type=int, default=4, help='keyframes averaged (default 4)')
    p.add_argument('--max-distance', type=int, default=15)
    p.add_argument('--mode', choices=('chain', 'compose'), default='chain')
    p.add_argument('--presets', default=','.join(DIS_PRESETS), help='DIS presets, comma separated')
    p.add_argument('--out', default='synth_analysis', help='output folder for JSON and plot')
    p.add_argument('--quiet', action='store_true')
    a = p.parse_args(argv)
    try:
        w, h = (int(v) for v in a.size.lower().split('x'))
    except ValueError:
        raise ConfigError(f'--size must be WxH, got {a.size!r}') from None
    presets = tuple(s.strip() for s in a.presets.split(',') if s.strip())
    res = propagation_limits(a.seed, (w, h), a.fps, a.keyframes, a.max_distance, a.mode, presets,
                             progress=not a.quiet)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    js = json.loads(json.dumps(res, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))
    (out / 'limits.json').write_text(json.dumps(js, indent=1))
    plot(res, out / 'limits.png')
    print(format_table(res))
    print('flow ms/pair: ' + ', '.join(f'{m} {v:.1f}' for m, v in res['flow_ms_per_pair'].items())
          + f'; render ms/frame {res["render_ms_per_frame"]:.0f}')
    print(f'wrote {out / "limits.json"} and {out / "limits.png"}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    import sys
    from .errors import VidsegError
    try:
        sys.exit(main())
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
