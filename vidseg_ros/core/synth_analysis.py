"""Limits of the flow approach (after Lup & Nedevschi) on a synthetic drive with exact labels and flow,
and on real frames with pseudo labels (:func:`real_limits`, ``vidseg flow-limits``).

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

import cv2
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


# ------------------------------------------------------------------------------------ real frames
REAL_FLOWS = ('ultrafast', 'fast', 'medium', 'ultrafast:finest_scale=0')


def parse_flow_spec(spec: str):
    """A flow setting -> (method, preset, parameters): ``PRESET[:KEY=VALUE[:...]]`` is DIS (e.g.
    ``ultrafast:finest_scale=0``); ``METHOD[:KEY=VALUE...]`` names another :data:`flow.METHODS` entry
    (``farneback``, or ``deepflow`` / ``rlof`` where OpenCV's contrib modules are installed)."""
    from .bench import parse_flow_params
    from .flow import METHODS
    head, *params = [t.strip() for t in str(spec).split(':')]
    if not head:
        raise ConfigError(f'flow setting must be PRESET[:KEY=VALUE...] or METHOD[:KEY=VALUE...], got {spec!r}')
    if head.lower() in METHODS and head.lower() != 'dis':
        return head.lower(), None, parse_flow_params(params)
    return 'dis', head, parse_flow_params(params)


def real_limits(data=None, seqs=None, frames=30, scale=2, flows=REAL_FLOWS, max_distance=5, model=None,
                progress=True) -> dict:
    """Limits of flow propagation on *real* frames: the Cityscapes snippets, whose pseudo labels (a strong
    network's, not human labels; there is no exact flow) stand in for the true labels.

    Every frame's pseudo labels, at the working resolution (``1/scale``, nearest), are carried
    1..``max_distance`` frames forward, chained frame to frame with the backward DIS field
    ``flow(t, t-1)`` at its native resolution (what the pipeline does; nearest warp; samples from outside
    the frame take the nearest border label) and scored against the pseudo labels of the frame they land
    on, at full resolution. Distance 0 is the pseudo labels' own round trip through the working
    resolution (the ceiling). With ``model`` (a ``load_model`` spec or instance), the keyframe network's
    own labels of every frame are carried the same way, next to it ('network/...' columns; distance 0 =
    its per-frame mIoU). One column per flow setting (``PRESET[:KEY=VALUE...]`` for DIS, or another method's
    name, :func:`parse_flow_spec`).
    """
    from .bench import _load_seq, resolve_snippets
    from .metrics import ConfusionMatrix
    from .pipeline import working_size
    from .warp import make_remap

    root, seqs = resolve_snippets(data, seqs)
    if int(frames) < 2 or int(max_distance) < 1:
        raise ConfigError(f'frames must be >= 2 and max_distance >= 1, got {frames}, {max_distance}')
    specs = [str(f) for f in flows]
    if not specs:
        raise ConfigError('at least one flow setting is needed')
    estimators = {}
    for spec in specs:
        method, preset, params = parse_flow_spec(spec)
        estimators[spec] = FlowEstimator(method, preset=preset, **params)   # validates names and values
    net = None
    if model is not None:
        from .models import load_model
        from .propagation import semantics_from_segmentation
        net = model if hasattr(model, 'segment') else load_model(model)
        if net.class_set.num_classes != CITYSCAPES.num_classes:
            raise ConfigError(f'--model must predict the {CITYSCAPES.num_classes} Cityscapes classes of the pseudo '
                              f'labels, got {net.class_set.num_classes} classes')
        class_map = np.asarray(net.output_to_class, np.uint8)
    sources = ['pseudo'] + (['network'] if net is not None else [])
    cols = [f'{src}/{spec}' for src in sources for spec in specs]
    k = CITYSCAPES.num_classes
    cms = {c: {} for c in cols}
    flow_s = {spec: [] for spec in specs}
    D = int(max_distance)
    from tqdm import tqdm
    bar = tqdm(total=len(seqs) * (1 + len(specs)), disable=not progress, desc='flow limits', unit='step')
    for seq in seqs:
        _, imgs, gts = _load_seq(root / seq, int(frames))
        n = len(imgs)
        size = (imgs[0].shape[1], imgs[0].shape[0])
        ws = working_size(size, scale)
        up = (lambda lab: cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)) if ws != size else (lambda lab: lab)
        grays = [cv2.cvtColor(cv2.resize(im, ws, interpolation=cv2.INTER_AREA) if ws != size else im,
                              cv2.COLOR_RGB2GRAY) for im in imgs]
        start = {'pseudo': [cv2.resize(g, ws, interpolation=cv2.INTER_NEAREST) for g in gts]}
        if net is not None:
            bar.set_postfix_str(f'{seq}: keyframe network on {n} frames')
            start['network'] = [semantics_from_segmentation(net.segment(im), class_map, ws).labels
                                for im in imgs]
        for src in sources:   # distance 0 does not depend on the flow: one matrix, shared by the columns
            cm0 = cms[f'{src}/{specs[0]}'].setdefault(0, ConfusionMatrix(k))
            for t in range(n):
                cm0.update(up(start[src][t]), gts[t])
            for spec in specs[1:]:
                cms[f'{src}/{spec}'][0] = cm0
        bar.update(1)
        for spec in specs:
            bar.set_postfix_str(f'{seq}: {spec}')
            maps = [None]
            for t in range(1, n):
                t0 = time.perf_counter()
                fb = estimators[spec].compute_native(grays[t], grays[t - 1])      # flow(t, t-1)
                flow_s[spec].append(time.perf_counter() - t0)
                maps.append(make_remap(fb, ws))
            for src in sources:
                c = cms[f'{src}/{spec}']
                for s0 in range(n - 1):
                    lab = start[src][s0]
                    for d in range(1, min(D, n - 1 - s0) + 1):
                        rm = maps[s0 + d]
                        lab = cv2.remap(lab, rm.map_x, rm.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
                        c.setdefault(d, ConfusionMatrix(k)).update(up(lab), gts[s0 + d])
            bar.update(1)
    bar.close()
    names = CITYSCAPES.names
    return {
        'data': str(root), 'seqs': seqs, 'frames': int(frames), 'scale': scale,
        'working_size': list(ws), 'max_distance': D, 'flows': specs, 'columns': cols,
        'miou_by_distance': {c: {d: float(m.miou()) for d, m in sorted(cms[c].items())} for c in cols},
        'pixel_accuracy_by_distance': {c: {d: float(m.pixel_accuracy()) for d, m in sorted(cms[c].items())}
                                       for c in cols},
        'class_iou_by_distance': {c: {d: {names[i]: float(v) for i, v in enumerate(m.iou()) if np.isfinite(v)}
                                      for d, m in sorted(cms[c].items())} for c in cols},
        'flow_ms_per_field': {spec: 1000 * float(np.median(v)) if v else None for spec, v in flow_s.items()},
        'flow_native_size': {spec: list(e.native_size(ws)) for spec, e in estimators.items()},
    }


THIN = ('pole', 'traffic light', 'traffic sign', 'person')


def format_real_table(res: dict) -> str:
    """mIoU by distance per column, then the thin classes' IoU at distance 0 and 1, then flow costs."""
    cols = res['columns']
    w = max(12, max(len(c) for c in cols) + 2)
    lines = ['mIoU (%) against the pseudo labels, by distance (frames) from the frame whose labels are carried '
             '(0 = its own labels at the working resolution)',
             'dist' + ''.join(f'{c:>{w}}' for c in cols)]
    for d in range(res['max_distance'] + 1):
        vals = [res['miou_by_distance'][c].get(d) for c in cols]
        lines.append(f'{d:4d}' + ''.join(f'{100 * v:{w}.2f}' if v is not None else f'{"-":>{w}}' for v in vals))
    lines.append('loss at distance 1 (points): '
                 + ', '.join(f'{c} {100 * (res["miou_by_distance"][c][0] - res["miou_by_distance"][c][1]):.2f}'
                             for c in cols if 1 in res['miou_by_distance'][c]))
    for d in (0, 1):
        lines.append(f'thin-class IoU % at distance {d}: ' + '; '.join(
            c + ' ' + ' / '.join(f'{100 * res["class_iou_by_distance"][c][d].get(n, float("nan")):.1f}' for n in THIN)
            for c in cols if d in res['class_iou_by_distance'][c]) + f'  ({" / ".join(THIN)})')
    lines.append('flow ms per field (median): ' + ', '.join(
        f'{s} {v:.1f} (native {res["flow_native_size"][s][0]}x{res["flow_native_size"][s][1]})'
        for s, v in res['flow_ms_per_field'].items() if v is not None))
    return '\n'.join(lines)


def plot_real(res: dict, path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for c in res['columns']:
        curve = res['miou_by_distance'][c]
        ds = sorted(curve)
        ax.plot(ds, [100 * curve[d] for d in ds], marker='o', ms=3, ls='--' if c.startswith('network') else '-',
                color=f'C{res["flows"].index(c.split("/", 1)[1])}', label=c)
    ax.set_xlabel('distance (frames)')
    ax.set_ylabel('mIoU (%) vs pseudo labels')
    w, h = res['working_size']
    ax.set_title(f'Carrying labels along optical flow on real frames ({w}x{h})', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def real_main(argv=None) -> int:
    """``vidseg flow-limits``: :func:`real_limits` on the Cityscapes snippets; JSON, table and plot."""
    p = argparse.ArgumentParser(prog='vidseg flow-limits', description=(
        'Limits of flow propagation on real frames: the pseudo labels (and, with --model, a keyframe network\'s '
        'labels) of every frame of the Cityscapes snippets carried 1..N frames along optical '
        'flow (DIS unless --flows names another method), mIoU by distance against the pseudo labels '
        '(BENCHMARKS.md section 8.1).'))
    p.add_argument('--data', default=None, help='folder of snippet folders (default ../shared cityscapes_seq)')
    p.add_argument('--seqs', nargs='+', default=None)
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--scale', type=int, default=2, help='working resolution = input / scale (default 2)')
    p.add_argument('--max-distance', type=int, default=5)
    p.add_argument('--flows', nargs='+', default=list(REAL_FLOWS), metavar='PRESET[:KEY=VALUE...]',
                   help='flow settings, one column each: a DIS preset with optional DIS parameters, or '
                        '"farneback", "deepflow", "rlof" (the last two need opencv-contrib-python-headless)')
    p.add_argument('--model', default=None, help='also carry this keyframe network\'s own labels')
    p.add_argument('--out', default='flow_limits', help='output folder for JSON and plot')
    p.add_argument('--quiet', action='store_true')
    a = p.parse_args(argv)
    res = real_limits(a.data, a.seqs, a.frames, a.scale, a.flows, a.max_distance, a.model, progress=not a.quiet)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'flow_limits.json').write_text(json.dumps(res, indent=1))
    plot_real(res, out / 'flow_limits.png')
    print(format_real_table(res))
    print(f'wrote {out / "flow_limits.json"} and {out / "flow_limits.png"}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    import sys
    from .errors import VidsegError
    try:
        sys.exit(main())
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
