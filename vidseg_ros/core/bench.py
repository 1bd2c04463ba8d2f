"""``vidseg bench``: the project's EVS Table 2 on ``../shared/data/cityscapes_seq``.

All rows are measured in ONE run on the same frames (4 snippets x 30 consecutive frames, 2048x1024,
pseudo labels in Cityscapes label ids -> train ids). Rows (operating points, working resolution = input
/ D, D = 2 by default so flow/warp run at the network's 1024x512):

* ``per_frame``      -- the keyframe network on every frame (S = 1), the baseline;
* ``warp_sN``        -- keyframe every N frames (N = 2, 3, 5, 10), labels warped with DIS flow (W+);
  the IAM is computed on every propagated frame (its cost is part of the propagated-frame cost) but
  not used: this is the "without IAM" row;
* ``warp_iam_sN``    -- "with IAM": as warp_sN plus refinement R through the IAM: where the IAM mask
  is set, the warped probabilities are blended (EVS eq. 4) with those of a low-resolution (1/2 by
  default: 512x256, the registry's 512x256 checkpoint when there is one) pass of the network
  (:class:`~vidseg_ros.core.propagation.LowResNetworkRefiner`, the stand-in, ``--refiner lowres``),
  or with a temporal module of issue 4 (``--refiner refiner|grfp|davss``, packaged weights, or
  ``--refiner region``: the keyframe network on the worst full-height strip, ``core/region.py``;
  ``--refiner region-tile``: the same on a 2:1 tile, as until session 10;
  run through ``temporal.TemporalPropagator`` with its own blend);
* ``two_sided_sN``   -- as warp_sN, delayed two-sided propagation (``core/bidirectional.py``): each
  propagated frame also gets the next keyframe carried back with the forward flows and fused in (not
  causal: a frame's labels wait for the next keyframe; frames after a snippet's last keyframe stay
  forward-only). Each side's chain carries a trust map (its flow links passed the forward-backward
  check), and where the sides disagree an untrusted side counts half. Charged on top of warp_sN: the
  checks, the backward warps and the fusion (to the propagated frames) and the flow pair into each
  keyframe (to the keyframe);
* ``two_sided_iam_s5`` -- (with refinement) two_sided_s5 whose forward states are warp_iam_s5's, refined
  by the refiner (e.g. ``--refiner region-ctx``); charged both;
* ``two_sided_s5_no_trust`` -- two_sided_s5 without the trust maps (the fusion of sessions 7-9);
* ``two_sided_s5_dN`` -- (``--two-sided-delays N ...``) as two_sided_s5 with at most N frames waiting for
  the next keyframe (``max_delay``): a frame more than N frames before it goes out forward-only. N = 0
  is causal warp_s5; N >= 4 is two_sided_s5;
* ``hold_s5``        -- keyframe every 5 frames, labels held (W off);
* ``adaptive``       -- AdaptiveSchedule (max interval 10, keyframe when the IAM inconsistent
  fraction of the last propagated frame reaches the threshold).

Costs: the keyframe network output (and its conversion to the propagated representation), the
propagation flows and the low-resolution refiner pass are computed ONCE per frame and cached; each
row is charged the measured cost of every cached stage it uses, plus its own measured warp/IAM/refine
time. ``ms/frame`` is the mean charged time per frame, ``speed-up`` = per-frame ms / row ms,
``prop/kf`` = mean propagated-frame cost (flow + warp + IAM [+ refine]) / mean keyframe cost.
Metrics: mIoU against the pseudo labels at full resolution; TC = temporal consistency (mIoU between the
prediction at t+1 warped to t with DIS *medium* flow and the prediction at t, at working resolution);
accuracy vs distance from the keyframe.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', default='espnetv2_s2.0', help='keyframe network (default espnetv2_s2.0)')
    p.add_argument('--weights', default=None)
    p.add_argument('--data', default=None, help='cityscapes_seq folder (default ../shared/data/cityscapes_seq)')
    p.add_argument('--seqs', nargs='+', default=None, help='snippet folders (default: every folder with pseudo_labels/)')
    p.add_argument('--frames', type=int, default=30, help='frames per snippet (default 30)')
    p.add_argument('--scale', type=int, default=2, help='working-resolution downscale D (default 2)')
    p.add_argument('--flow-preset', default='ultrafast', choices=('ultrafast', 'fast', 'medium'))
    p.add_argument('--flow-param', nargs='+', default=None, metavar='KEY=VALUE',
                   help='explicit DIS parameters over the preset, e.g. use_mean_normalization=0 '
                        'variational_refinement_iterations=2 alpha=2 (names: flow.FlowEstimator)')
    p.add_argument('--adaptive-threshold', type=float, default=0.1,
                   help='IAM inconsistent fraction that forces a keyframe in the adaptive row')
    p.add_argument('--backend', default='auto')
    p.add_argument('--device', default='cpu')
    p.add_argument('--refine-factor', type=int, default=2,
                   help='the warp_iam rows refine with the network at 1/F of its input size (default 2)')
    p.add_argument('--no-refine', action='store_true', help='skip the warp_iam rows (no low-res network)')
    p.add_argument('--refiner', default='lowres', choices=REFINERS,
                   help="what the warp_iam rows refine with: 'lowres' (the stand-in: the network at 1/F of "
                        "its input size, default) or a learned temporal module of issue 4 (packaged weights)")
    p.add_argument('--two-sided-delays', nargs='+', type=int, default=None, metavar='N',
                   help='add two_sided_s5_dN rows: two-sided S=5 with at most N frames waiting for the next '
                        'keyframe (the latency / accuracy trade-off of the delayed output)')
    p.add_argument('--out', default='bench_out', help='output folder (bench.json, bench.md, plots)')
    p.add_argument('-q', '--quiet', action='store_true')


def run_from_args(args) -> int:
    res = run_bench(model=args.model, weights=args.weights, data=args.data, seqs=args.seqs,
                    frames=args.frames, scale=args.scale, flow_preset=args.flow_preset,
                    flow_params=parse_flow_params(args.flow_param),
                    adaptive_threshold=args.adaptive_threshold, backend=args.backend, device=args.device,
                    refine=not args.no_refine, refine_factor=args.refine_factor, refiner=args.refiner,
                    two_sided_delays=args.two_sided_delays, out=args.out, progress=not args.quiet)
    print(res['table_md'])
    print(f'\nwrote {Path(args.out) / "bench.json"}, bench.md, accuracy_vs_distance.png, speed_vs_accuracy.png')
    return 0


REFINERS = ('lowres', 'refiner', 'grfp', 'davss', 'region', 'region-tile', 'region-ctx')


def parse_flow_params(items) -> dict:
    """``['KEY=VALUE', ...]`` -> DIS parameters (numbers; true/false for the use_* switches);
    ConfigError on a malformed item (unknown names are rejected by FlowEstimator)."""
    from .errors import ConfigError
    out = {}
    for it in items or ():
        k, sep, v = str(it).partition('=')
        k, v = k.strip(), v.strip().lower()
        if not sep or not k or not v:
            raise ConfigError(f'--flow-param takes KEY=VALUE, got {it!r}')
        if v in ('true', 'false'):
            out[k] = v == 'true'
            continue
        try:
            out[k] = float(v) if any(c in v for c in '.e') else int(v)
        except ValueError:
            raise ConfigError(f'--flow-param {k}: {v!r} is not a number or true/false') from None
    return out


def _rows(refine: bool, adaptive_threshold: float, scale: int, two_sided_delays=()):
    from .schedule import OperatingPoint
    rows = [OperatingPoint('per_frame', scale, 1, True, False)]
    for s in (2, 3, 5, 10):
        rows.append(OperatingPoint(f'warp_s{s}', scale, s, True, False))
    if refine:
        for s in (2, 3, 5, 10):
            rows.append(OperatingPoint(f'warp_iam_s{s}', scale, s, True, True))
    for s in (2, 3, 5, 10):
        rows.append(OperatingPoint(f'two_sided_s{s}', scale, s, True, False, two_sided=True))
    if refine:   # the refined forward states fused two-sided (the carried-back chain is plain warping)
        rows.append(OperatingPoint('two_sided_iam_s5', scale, 5, True, True, two_sided=True))
    # the same fusion without the chains' trust (sessions 7-9): what the trust buys, and costs
    rows.append(OperatingPoint('two_sided_s5_no_trust', scale, 5, True, False, two_sided=True, trust=False))
    for d in sorted(set(int(d) for d in two_sided_delays or ())):
        rows.append(OperatingPoint(f'two_sided_s5_d{d}', scale, 5, True, False, two_sided=True, max_delay=d))
    rows.append(OperatingPoint('hold_s5', scale, 5, False, False))
    rows.append(OperatingPoint('adaptive', scale, 10, True, False,
                               schedule={'type': 'adaptive', 'max_interval': 10, 'min_interval': 2,
                                         'inconsistency_threshold': adaptive_threshold}))
    return rows


class _CachedRefiner:
    """LowResNetworkRefiner whose network pass is computed once per frame (``frame`` set by the bench)."""

    def __init__(self, inner):
        self.inner = inner
        self.frame = None
        self.cache = {}     # frame -> (probs, seconds)
        self.charged = 0.0  # cached cost of the passes used for the current frame
        self.spent = 0.0    # time actually spent in the network for the current frame

    def __call__(self, image, warped, mask):
        key = self.frame
        if key not in self.cache:
            t = time.perf_counter()
            p = self.inner(image, warped, mask)
            dt = time.perf_counter() - t
            self.cache[key] = (p, dt)
            self.spent += dt
        p, cost = self.cache[key]
        self.charged += cost
        return p


def resolve_snippets(data=None, seqs=None):
    """(root, snippet names) of a cityscapes_seq-like folder (default ``../shared``'s): every sub-folder
    with ``pseudo_labels/`` unless ``seqs`` names them; InputError naming what is missing."""
    from .paths import shared_dir
    root = Path(data) if data else shared_dir() / 'data' / 'cityscapes_seq'
    if not root.is_dir():
        raise InputError(f'cityscapes_seq not found: {root} (set VIDSEG_SHARED or --data)')
    seqs = list(seqs) if seqs else sorted(p.name for p in root.iterdir() if (p / 'pseudo_labels').is_dir())
    if not seqs:
        raise InputError(f'no snippet folders with pseudo_labels/ in {root}')
    for s in seqs:
        if not (root / s).is_dir():
            raise InputError(f'snippet folder not found: {root / s}')
    return root, seqs


def _load_seq(folder: Path, n: int):
    from .io import read_image, read_label_png
    imgs = sorted(p for p in folder.iterdir() if p.suffix.lower() in ('.jpg', '.png') and p.is_file())
    if not imgs:
        raise InputError(f'no frames in {folder}')
    imgs = imgs[:n]
    gt_dir = folder / 'pseudo_labels'
    frames, gts = [], []
    for p in imgs:
        g = gt_dir / f'{p.stem}.png'
        if not g.is_file():
            raise InputError(f'pseudo label missing for {p.name}: {g}')
        frames.append(read_image(p))
        gts.append(read_label_png(g, 'labelids'))
    return [p.stem for p in imgs], frames, gts


def run_bench(model='espnetv2_s2.0', weights=None, data=None, seqs=None, frames=30, scale=2,
              flow_preset='ultrafast', adaptive_threshold=0.1, backend='auto', device='cpu', flow_params=None,
              refine=True, refine_factor=2, refiner='lowres', two_sided_delays=None, out='bench_out',
              progress=True) -> dict:
    """Run the benchmark (see module docstring); writes bench.json, bench.md and two plots to ``out``.

    ``model``: a spec for ``load_model`` or a KeyframeModel instance. ``data``: a folder of snippet
    folders (``<seq>/*.jpg|png`` frames and ``<seq>/pseudo_labels/<stem>.png`` Cityscapes label ids)."""
    from tqdm import tqdm

    from .flow import FlowEstimator
    from .io import write_json
    from .metrics import AccuracyByDistance, ConfusionMatrix
    from .models import load_model
    from .pipeline import VideoSegmenter, make_low_res_refiner, working_size
    from .propagation import semantics_from_segmentation
    from .warp import warp_labels

    t_start = time.perf_counter()
    out_dir = Path(out)
    root, seqs = resolve_snippets(data, seqs)
    if int(frames) < 2:
        raise InputError(f'--frames must be >= 2, got {frames}')
    net = model if hasattr(model, 'segment') else load_model(model, weights=weights, device=device,
                                                              backend=backend)
    cs = net.class_set
    k = cs.num_classes
    class_map = np.asarray(net.output_to_class, np.uint8)
    if refiner not in REFINERS:
        raise InputError(f'unknown refiner {refiner!r} (known: {", ".join(REFINERS)})')
    learned = None
    if refine and refiner != 'lowres':
        from .temporal import make_temporal_module
        mode = refiner if refiner == 'region-ctx' else 'region' if refiner.startswith('region') else refiner
        learned = make_temporal_module(mode, net, device=device,
                                       **({'tile_shape': 'tile'} if refiner == 'region-tile' else {}))
    refiner_base = make_low_res_refiner(net, refine_factor) if (refine and learned is None) else None
    prop_flow = FlowEstimator('dis', preset=flow_preset, **(flow_params or {}))
    tc_flow = FlowEstimator('dis', preset='medium')
    rows = _rows(refine, adaptive_threshold, scale, two_sided_delays)

    acc = {op.name: {'cm': ConfusionMatrix(k), 'tc': ConfusionMatrix(k), 'dist': AccuracyByDistance(k),
                     'charged': 0.0, 'frames': 0, 'kf': 0, 'kf_cost': 0.0, 'prop_cost': 0.0, 'prop_n': 0,
                     'stage': {}, 'inconsistent': []} for op in rows}
    cache_cost = {'keyframe': [], 'flow': [], 'refine_net': [], 'tc_flow': 0.0}

    bar = tqdm(total=len(seqs) * (1 + len(rows)), disable=not progress, desc='vidseg bench', unit='step')
    for seq in seqs:
        stems, imgs, gts = _load_seq(root / seq, int(frames))
        size = (imgs[0].shape[1], imgs[0].shape[0])
        ws = working_size(size, scale)
        work = [cv2.resize(im, ws, interpolation=cv2.INTER_AREA) if ws != size else im for im in imgs]
        grays = [cv2.cvtColor(w_, cv2.COLOR_RGB2GRAY) for w_ in work]
        # ---- caches shared by every row: keyframe outputs, propagation flows, TC flows
        sem_cache, kf_cost, flow_cache, flow_cost = {}, {}, {}, {}
        bar.set_postfix_str(f'{seq}: keyframe network on {len(imgs)} frames')
        for i, im in enumerate(imgs):
            t = time.perf_counter()
            seg = net.segment(im)
            sem_cache[i] = semantics_from_segmentation(seg, class_map, ws)
            kf_cost[i] = time.perf_counter() - t
            del seg
            if i > 0:
                t = time.perf_counter()
                bwd = prop_flow.compute_native(grays[i], grays[i - 1])
                fwd = prop_flow.compute_native(grays[i - 1], grays[i])
                flow_cost[i] = time.perf_counter() - t
                flow_cache[i] = (bwd, fwd)
        t = time.perf_counter()
        tc_flows = [tc_flow(grays[i], grays[i + 1]) for i in range(len(imgs) - 1)]
        cache_cost['tc_flow'] += time.perf_counter() - t
        cache_cost['keyframe'] += list(kf_cost.values())
        cache_cost['flow'] += list(flow_cost.values())
        bar.update(1)
        cref = _CachedRefiner(refiner_base) if refiner_base is not None else None
        for op in rows:
            bar.set_postfix_str(f'{seq}: {op.name}')
            a = acc[op.name]
            vs = VideoSegmenter(net, op, flow=prop_flow, refiner=cref if op.refine else None,
                                keyframe_fn=lambda i, rgb: sem_cache[i],
                                flow_fn=lambda i, prev, cur: flow_cache[i])
            if op.refine and learned is not None:
                from .temporal import attach
                attach(vs, learned)   # its cost is measured on every frame (nothing cached)
            runner = None
            if op.two_sided:
                from .bidirectional import TwoSidedSegmenter
                runner = TwoSidedSegmenter(vs, max_delay=op.max_delay, trust=op.trust)
            prev_lab = None
            waiting = []    # frame indices whose (two-sided) output is not final yet

            def score(outs):
                nonlocal prev_lab
                for out in outs:
                    j = waiting.pop(0)
                    a['cm'].update(out.labels, gts[j])
                    a['dist'].update(out.distance, out.labels, gts[j])
                    lab = out.semantics.labels if out.semantics is not None else out.labels
                    if prev_lab is not None:
                        a['tc'].update(warp_labels(lab, tc_flows[j - 1]), prev_lab)
                    prev_lab = lab

            for i, im in enumerate(imgs):
                if cref is not None:
                    cref.frame = (seq, i)
                    cref.charged = cref.spent = 0.0
                waiting.append(i)
                if runner is None:
                    out = vs.process(im)
                    released = [out]
                else:
                    released = runner.process(im)
                    out = runner.last_forward
                tm = out.timings
                if out.is_keyframe:
                    cost = kf_cost[i] + tm.get('upsample', 0.0)
                    if runner is not None and i > 0:
                        # the flow pair into the keyframe: the forward field carries it back, the pair
                        # gives that link's forward-backward check (two-sided trust; the no-trust row
                        # needs only the forward field but is charged the pair too: conservative)
                        cost += flow_cost[i]
                    a['kf'] += 1
                    a['kf_cost'] += kf_cost[i]
                else:
                    own = tm.get('warp', 0.0) + tm.get('iam', 0.0) + tm.get('refine', 0.0)
                    fl = flow_cost.get(i, 0.0) if op.warp else 0.0
                    # the refine timing includes the low-res network pass: replace the time actually
                    # spent (0 on a cache hit) by the pass's measured cost
                    adj = (cref.charged - cref.spent) if (cref is not None and op.refine) else 0.0
                    own += adj
                    cost = fl + own + tm.get('upsample', 0.0)
                    a['prop_cost'] += fl + own
                    a['prop_n'] += 1
                    for s_ in ('warp', 'iam', 'refine'):
                        a['stage'][s_] = a['stage'].get(s_, 0.0) + tm.get(s_, 0.0) + (adj if s_ == 'refine' else 0.0)
                    a['stage']['flow'] = a['stage'].get('flow', 0.0) + fl
                    if out.mask is not None:
                        a['inconsistent'].append(out.inconsistent_fraction)
                if runner is not None:
                    # carrying the keyframe back and fusing: charged to the propagated frames it serves
                    fuse = runner.buffer.last_fuse_s
                    cost += fuse
                    a['prop_cost'] += fuse
                    a['stage']['two_sided'] = a['stage'].get('two_sided', 0.0) + fuse
                a['charged'] += cost
                a['frames'] += 1
                score(released)
            if runner is not None:
                score(runner.flush())
            bar.update(1)
        if cref is not None:
            cache_cost['refine_net'] += [c for _, c in cref.cache.values()]
        imgs = work = sem_cache = flow_cache = tc_flows = None   # free the snippet before the next one
    bar.close()

    base = acc['per_frame']
    base_ms = 1000 * base['charged'] / base['frames']
    base_miou = base['cm'].miou()
    mean_kf = float(np.mean(cache_cost['keyframe']))
    table = []
    for op in rows:
        a = acc[op.name]
        ms = 1000 * a['charged'] / a['frames']
        prop_ms = 1000 * a['prop_cost'] / a['prop_n'] if a['prop_n'] else None
        row = {
            'name': op.name, 'operating_point': op.to_dict(), 'label': op.label(),
            'miou': 100 * a['cm'].miou(), 'miou_drop': 100 * (base_miou - a['cm'].miou()),
            'pixel_accuracy': 100 * a['cm'].pixel_accuracy(), 'tc': 100 * a['tc'].miou(),
            'ms_per_frame': ms, 'fps': 1000 / ms, 'speedup': base_ms / ms,
            'keyframes': a['kf'], 'frames': a['frames'],
            'propagated_ms': prop_ms,
            'prop_over_keyframe': (prop_ms / (1000 * mean_kf)) if prop_ms is not None else None,
            'propagated_stage_ms': {s: 1000 * v / a['prop_n'] for s, v in a['stage'].items()} if a['prop_n'] else {},
            'mean_inconsistent_fraction': float(np.mean(a['inconsistent'])) if a['inconsistent'] else None,
            'miou_by_distance': {int(d): 100 * v for d, v in a['dist'].miou_by_distance().items()},
            'iou': a['cm'].summary(cs.names)['iou'],
        }
        table.append(row)
    refiner_info = None
    if learned is not None:
        refiner_info = {'type': type(learned).__name__, 'mode': refiner,
                        **({'shape': learned.shape} if hasattr(learned, 'shape') else {}),
                        **({'context_used': learned.context_used, 'context_missing': learned.context_missing}
                           if hasattr(learned, 'context_used') else {})}
    elif refine:
        refiner_info = {'type': 'LowResNetworkRefiner', 'model': getattr(refiner_base.model, 'name', None),
                        'input_size': list(refiner_base.input_size or getattr(refiner_base.model, 'input_size', ()))}
    result = {
        'model': {'name': net.name, 'input_size': list(net.input_size), 'backend': net.backend,
                  'device': net.device},
        'data': {'root': str(root), 'seqs': seqs, 'frames_per_seq': int(frames),
                 'input_size': list(size), 'working_size': list(ws)},
        'flow': prop_flow.describe(), 'tc_flow': tc_flow.describe(),
        'refiner': refiner_info,
        'mean_keyframe_ms': 1000 * mean_kf,
        'mean_flow_pair_ms': 1000 * float(np.mean(cache_cost['flow'])) if cache_cost['flow'] else None,
        'mean_refine_net_ms': 1000 * float(np.mean(cache_cost['refine_net'])) if cache_cost['refine_net'] else None,
        'rows': table,
        'wall_s': time.perf_counter() - t_start,
        'definitions': __doc__,
    }
    result['table_md'] = format_table(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / 'bench.json', result)
    (out_dir / 'bench.md').write_text(result['table_md'] + '\n')
    _plots(result, out_dir)
    return result


def _f(v, fmt='{:.1f}'):
    return 'n/a' if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def format_table(result: dict) -> str:
    """Markdown table of the rows (EVS Table 2 layout)."""
    d = result['data']
    lines = [f"EVS Table 2 on cityscapes_seq ({len(d['seqs'])} snippets x {d['frames_per_seq']} frames, "
             f"{d['input_size'][0]}x{d['input_size'][1]} -> working {d['working_size'][0]}x{d['working_size'][1]}), "
             f"model {result['model']['name']} ({result['model']['backend']}), keyframe "
             f"{result['mean_keyframe_ms']:.0f} ms, flow pair {_f(result['mean_flow_pair_ms'])} ms",
             '',
             '| row | D S W R | keyframes | mIoU | drop | TC | ms/frame | fps | speed-up | prop ms | prop/kf |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in result['rows']:
        lines.append(f"| {r['name']} | {r['label']} | {r['keyframes']}/{r['frames']} | {_f(r['miou'])} | "
                     f"{_f(r['miou_drop'])} | {_f(r['tc'])} | {_f(r['ms_per_frame'], '{:.0f}')} | "
                     f"{_f(r['fps'], '{:.2f}')} | {_f(r['speedup'], '{:.2f}')}x | {_f(r['propagated_ms'])} | "
                     f"{'n/a' if not r['prop_over_keyframe'] else '1/' + format(1 / r['prop_over_keyframe'], '.0f')} |")
    return '\n'.join(lines)


def _plots(result: dict, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # colour = keyframe interval, line style = family (plain warp, warp + IAM refine, two-sided (refined), hold)
    styles = (('warp_iam', ':'), ('two_sided_iam', (0, (5, 1, 1, 1))), ('two_sided', '--'), ('hold', '-.'),
              ('warp', '-'))
    colours = {}
    for r in result['rows']:
        if r['name'] in ('per_frame',) or not r['miou_by_distance'] or r['operating_point'].get('max_delay') is not None \
                or not r['operating_point'].get('trust', True):
            continue
        fam = next((f for f, _ in styles if r['name'].startswith(f)), None)
        if fam is None:
            continue
        interval = r['operating_point'].get('interval')
        c = colours.setdefault(interval, f'C{len(colours)}')
        ds = sorted(r['miou_by_distance'], key=int)
        ax.plot([int(x) for x in ds], [r['miou_by_distance'][x] for x in ds], marker='o', ms=3, color=c,
                ls=dict(styles)[fam], label=r['name'])
    base = next(r for r in result['rows'] if r['name'] == 'per_frame')
    ax.axhline(base['miou'], color='k', ls='--', label='per-frame')
    ax.set_xlabel('frames since keyframe')
    ax.set_ylabel('mIoU vs pseudo labels (%)')
    ax.set_title('Accuracy vs distance from keyframe')
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    save_figure(fig, out_dir / 'accuracy_vs_distance.png')

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result['rows']:
        ax.scatter(r['fps'], r['miou'], s=30)
        ax.annotate(r['name'], (r['fps'], r['miou']), fontsize=7, xytext=(3, 3), textcoords='offset points')
    ax.set_xlabel('frames per second (charged cost)')
    ax.set_ylabel('mIoU (%)')
    ax.set_title('Speed vs accuracy operating points')
    ax.grid(alpha=0.3)
    save_figure(fig, out_dir / 'speed_vs_accuracy.png')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg bench', description=__doc__.split('\n')[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == '__main__':  # pragma: no cover
    raise SystemExit(json.dumps(main()))
