"""EVS Table 1 for this project: per-class IoU of per-frame segmentation, plain warping and each
temporal module at keyframe intervals S (default 2 and 5) on a held-out Cityscapes snippet.

    python -m vidseg_ros.core.temporal_bench [--seq seq0003] [--size 512x256] [--intervals 2 5]
    python -m vidseg_ros.core.temporal_bench --cheap-candidates espnetv2_s0.5_512x256@192x96 ...
        (cost and accuracy of candidate cheap current-frame networks of GRFP/DAVSS, ``run_cheap``)
    ... --variants grfp-b=grfp:runs/x/grfp.pt   (extra rows: a learned mode with other weights)
    ... --variants r30=region@0.30               (region refresh of 30 % of the frame; tile@0.30: 2:1 tile)
    ... --two-sided                              (each propagator row also delayed, fused with the next
                                                  keyframe carried back: rows LABEL+2s; not causal)

Ground truth: the snippet's pseudo labels (Cityscapes label ids -> train ids), resized (nearest) to
the working size, where everything is evaluated. The keyframe network runs (``--backend``, default the
deployed one: onnxruntime on the CPU) on every frame once; its outputs serve as per-frame results and as keyframe semantics for every mode; DIS
flows (native resolution, as in the pipeline) are computed once. Per mode: mIoU over all frames and
over propagated frames only, the recovered share of the warping drop
``(mIoU_mode - mIoU_warp) / (mIoU_per_frame - mIoU_warp)`` (and 'rec-gt', the same on mIoU-gt), and the per-frame cost of the module
(refine step; for caching the whole non-keyframe pass incl. its flow) relative to one keyframe
network pass ('cost/kf'), the same for the whole propagated frame (flow pair + warp + IAM + module:
'frame/kf'); 'agree-net': pixel agreement of the propagated frames with the keyframe network's
own labels on them (what the modules are trained to reproduce); 'mIoU-gt': mean over the classes
present in the pseudo labels (classes only predicted count as IoU 0 in 'mIoU'). Costs are measured
after the accuracy runs in interleaved rounds on one frame (``measure_costs``). 'mean/kf': the mean cost per
frame over the whole sequence, keyframes included (``mean_cost_rel``). Below the table, each module against
spending the same compute on keyframes instead: plain warping's mIoU at the module's mean cost, interpolated
between the intervals run (``same_compute``; run several ``--intervals`` to get a line). Writes a text table,
a JSON file and two plots: recovered share against cost at the largest interval (``*_tradeoff.png``) and
mIoU against mean cost with plain warping's 'more keyframes' line (``*_compute.png``).
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
from .temporal_train import UDACITY_VIDEO, video_frames

TWO_SIDED_SUFFIX = '+2s'   # a row's delayed two-sided twin (--two-sided)
PROP_MODES = ('warp', 'iam-lowres', 'refiner', 'grfp', 'davss', 'region', 'region-ctx')
CACHE_MODES = ('cache1', 'cache2')
#: feature caching as the ROS graph runs it (caching.CachedFeatureRefresher in a TemporalPropagator: the
#: cached maps warped frame to frame with the state, not with a flow from the keyframe)
GRAPH_CACHE_MODES = ('cache1-graph', 'cache2-graph')


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


def load_video(path: Path, size, frames: int):
    """The first ``frames`` frames of a video, area-resized to ``size`` (RGB)."""
    if not Path(path).is_file():
        raise InputError(f'video not found: {path}')
    imgs = video_frames(path, size, frames)
    if len(imgs) < 2:
        raise InputError(f'cannot read 2 frames from {path}')
    return imgs


def _iou_row(cm):
    iou = cm.iou()
    present = (cm.mat.sum(axis=1) + cm.missed) > 0
    return {'miou': cm.miou(), 'miou_gt': float(np.nanmean(iou[present])) if present.any() else None,
            'pixel_acc': cm.pixel_accuracy(), 'iou': [None if np.isnan(v) else float(v) for v in iou]}


def measure_costs(model, modules: dict, imgs, sems, bwd, fwd, flow, rounds: int = 7) -> dict:
    """Per-frame seconds of each module and its ratio to one keyframe network pass, measured in
    interleaved rounds on the same frame (so that load changes on a shared machine hit all alike).
    Propagator modes: the module call, and the whole propagated frame (flow pair + warp + IAM +
    module); caching: its whole non-keyframe ``process`` (incl. its flow)."""
    from .propagation import Propagator
    from .temporal import TemporalPropagator
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
            elif hasattr(mod, 'context_used'):   # region-ctx: the tile as for region, plus the grids' warp
                ksem = mod.keyframe_semantics(prev, warped.size)[0]
                q = Propagator()
                q.set_keyframe(t - 1, ksem)
                q.step(t - 1)
                t0 = time.perf_counter()
                warped_ctx = q.step(t, bwd[t], fwd[t]).semantics
                dt = max(time.perf_counter() - t0 - wi, 0.0)
                t0 = time.perf_counter()
                mod.refresh(image, warped_ctx, mask, prev=ksem, flow_bwd=bwd[t])
                dt += time.perf_counter() - t0
            elif hasattr(mod, 'keyframe_semantics'):   # the graph's caching: warp of the cached maps + module
                q = TemporalPropagator(refiner=mod)
                q.set_keyframe(t - 1, mod.keyframe_semantics(prev, warped.size)[0])
                q.step(t - 1, image=prev)
                t0 = time.perf_counter()
                q.step(t, bwd[t], fwd[t], image=image)
                dt = max(time.perf_counter() - t0 - wi, 0.0)
            else:
                t0 = time.perf_counter()
                if hasattr(mod, 'refresh'):
                    mod.refresh(image, warped, mask, prev=sems[t - 1], flow_bwd=bwd[t])
                elif hasattr(mod, 'refine'):
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


def _setup_model(args) -> tuple:
    """(working size, shared data root, keyframe network spec, keyframe model) of a run."""
    from .models import load_model
    from .temporal_train import default_teacher, parse_size
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    root = Path(args.shared) if args.shared else shared_dir()
    spec = args.model if args.model != 'auto' else default_teacher(size)
    return size, root, spec, load_model(spec, backend=getattr(args, 'backend', 'auto'), input_size=size,
                                        device=args.device)


def _setup(args) -> tuple:
    """(working size, keyframe network spec, frames, pseudo labels, keyframe model) of a run on the
    first snippet."""
    size, root, spec, model = _setup_model(args)
    imgs, gts = load_snippet(root, args.seqs[0], size, args.frames)
    return size, spec, imgs, gts, model


def run_cheap(args) -> dict:
    """Candidate cheap current-frame networks of GRFP/DAVSS (``refiner.CheapPass`` specs
    ``NAME@WxH``): per-frame cost relative to the keyframe network (median over interleaved rounds
    on one frame, as called at runtime: to the probability grid), and mIoU / pixel agreement with
    the keyframe network's labels of their own output upsampled to the working size."""
    from .metrics import ConfusionMatrix
    from .propagation import prob_size
    from .refiner import CheapPass
    size, spec, imgs, gts, model = _setup(args)
    cps = [CheapPass.load(c, args.device) for c in args.cheap_candidates]
    k = CITYSCAPES.num_classes
    cm_kf, kf_labels = ConfusionMatrix(k), []
    for im, g in zip(imgs, gts):
        kf_labels.append(model.segment(im).labels)
        cm_kf.update(kf_labels[-1], g)
    rows = {}
    for cp in cps:
        cm, agree = ConfusionMatrix(k), []
        cmap = np.asarray(cp.model.output_to_class, np.uint8)
        for im, g, kl in zip(imgs, gts, kf_labels):
            lab = cmap[np.argmax(cp(im, size), 0)]
            cm.update(lab, g)
            agree.append(float(np.mean(lab == kl)))
        rows[cp.spec] = {'miou': cm.miou(), 'agree_keyframe': float(np.mean(agree)), 'sec': [], 'rel': []}
    img, grid, kf_t = imgs[min(2, len(imgs) - 1)], prob_size(size), []
    for r in range(args.cost_rounds + 1):
        t0 = time.perf_counter()
        model.segment(img)
        kf = time.perf_counter() - t0
        for cp in cps:
            t0 = time.perf_counter()
            cp(img, grid)
            dt = time.perf_counter() - t0
            if r:   # round 0: warm-up
                rows[cp.spec]['sec'].append(dt)
                rows[cp.spec]['rel'].append(dt / kf)
        kf_t.append(kf)
    for row in rows.values():
        row['cheap_s'], row['cost_rel'] = float(np.median(row.pop('sec'))), float(np.median(row.pop('rel')))
    return {'config': {'seq': args.seqs[0], 'frames': len(imgs), 'size': list(size), 'model': spec,
                       'device': args.device, 'threads': torch.get_num_threads(), 'rounds': args.cost_rounds},
            'keyframe_network_s': float(np.median(kf_t[1:])), 'keyframe_miou': cm_kf.miou(), 'candidates': rows}


def format_cheap(res: dict) -> str:
    c = res['config']
    lines = [f"Cheap current-frame networks on {c['seq']} ({c['frames']} frames, {c['size'][0]}x{c['size'][1]}; "
             f"keyframe network {c['model']} {1000 * res['keyframe_network_s']:.0f} ms, mIoU "
             f"{100 * res['keyframe_miou']:.1f}; {c['threads']} thread(s))",
             f"{'cheap network':<34}{'ms':>6}{'cost/kf':>9}{'mIoU':>7}{'agree-kf':>9}"]
    for name, r in res['candidates'].items():
        lines.append(f"{name:<34}{1000 * r['cheap_s']:6.0f}{r['cost_rel']:9.3f}{_p(r['miou'])}"
                     f"{_p(r['agree_keyframe']):>9}")
    return '\n'.join(lines)


def table_entries(args) -> list:
    """(row label, mode, weights path or None, options) of every table row: ``--modes`` (weights
    from ``--weights-dir`` or the packaged ones), then each ``--variants LABEL=MODE:WEIGHTS``
    (MODE 'grfp+gate' / 'grfp-gate': GRFP with its class gate forced on / off), or
    ``LABEL=region@AREA[/MODEL][+ctx]`` (region refresh of AREA of the frame, no weights; ``strip@`` /
    ``tile@`` instead of ``region@`` force the full-height strip / the 2:1 tile; ``/MODEL`` runs
    another network on it; ``+ctx``: mode region-ctx, the keyframe's global context for the tile network)."""
    out = []
    for m in args.modes:
        if m not in PROP_MODES + CACHE_MODES + GRAPH_CACHE_MODES:
            raise ConfigError(f'unknown mode {m!r} (known: {", ".join(PROP_MODES + CACHE_MODES + GRAPH_CACHE_MODES)})')
        learned = args.weights_dir and m in ('refiner', 'grfp', 'davss')
        out.append((m, m, Path(args.weights_dir) / f'{m}.pt' if learned else None, {}))
    for v in args.variants or ():
        label, _, rest = v.partition('=')
        mode, _, path = rest.partition(':')
        opts = {}
        kind, at, spec = mode.partition('@')
        region = bool(at) and kind in ('region', 'strip', 'tile') and not path   # region refresh of an area
        if region:
            spec, ctx, _ = spec.partition('+ctx')
            area_s, _, tile_model = spec.partition('/')
            try:
                area = float(area_s)
            except ValueError:
                area = -1.0
            if not 0.0 < area <= 1.0:
                raise ConfigError(f'--variants {v!r}: {kind}@AREA needs an area in (0, 1]')
            mode, opts = 'region', {'tile_area': area}   # (region-ctx with +ctx, below)
            if kind != 'region':
                opts['tile_shape'] = kind
            if tile_model:
                opts['tile_model'] = tile_model
            if ctx:
                mode = 'region-ctx'
        elif mode in ('grfp+gate', 'grfp-gate'):
            mode, opts = 'grfp', {'gate_classes': mode.endswith('+gate')}
        if not label or not region and (mode not in ('refiner', 'grfp', 'davss') or not path):
            raise ConfigError(f'--variants takes LABEL=MODE:WEIGHTS with MODE refiner|grfp|grfp+gate|grfp-gate|'
                              f'davss, or LABEL=region@AREA (strip@AREA, tile@AREA), got {v!r}')
        if label in [e[0] for e in out]:
            raise ConfigError(f'--variants label {label!r} is used twice or names a mode')
        out.append((label, mode, None if region else Path(path), opts))
    return out


def weights_for(path, seq: str):
    """A weights path of ``--weights-dir`` / ``--variants`` for held-out snippet ``seq``
    (``{seq}`` in the path is replaced: cross-validation, one training run per held-out snippet)."""
    return None if path is None else Path(str(path).replace('{seq}', seq))


def _trained_on(module) -> list:
    net = getattr(module, 'net', None)
    return list(((getattr(net, 'meta', None) or {}).get('data') or {}).get('sequences') or [])


def run(args) -> dict:
    """The table over ``args.seqs`` (confusion matrices pooled over the snippets; each snippet is
    evaluated with the weights its ``{seq}`` path names); costs measured on the last snippet."""
    from tqdm import tqdm

    from .bidirectional import TwoSidedBuffer
    from .flow import FlowEstimator
    from .metrics import ConfusionMatrix
    from .models import load_model
    from .propagation import semantics_from_segmentation
    from .temporal import TemporalPropagator, make_temporal_module

    entries = table_entries(args)
    two_sided = bool(getattr(args, 'two_sided', False))
    if two_sided and not any(mode in PROP_MODES for _, mode, *_ in entries):
        raise ConfigError('--two-sided needs a propagator mode among the rows (warp, region, ...)')
    phase = int(getattr(args, 'phase', 0) or 0)
    if not 0 <= phase < min(args.intervals):
        raise ConfigError(f'--phase must be in [0, {min(args.intervals) - 1}] (below the smallest interval), got {phase}')

    def is_kf(i, S):   # frame 0, then every S-th frame from ``phase`` on
        return i == 0 or (i >= phase and (i - phase) % S == 0)

    size, root, spec, model = _setup_model(args)
    k = CITYSCAPES.num_classes
    cmap = np.asarray(model.output_to_class, np.uint8)
    flow = FlowEstimator('dis', preset=args.flow_preset)
    torch_model = model if getattr(model, 'backend', 'torch') == 'torch' else None
    cm_pf = ConfusionMatrix(k)
    labels = [label for label, *_ in entries]
    if two_sided:   # each propagator row also delayed: fused with the next keyframe carried back
        labels += [label + TWO_SIDED_SUFFIX for label, mode, *_ in entries if mode in PROP_MODES]
    pooled = {S: {label: (ConfusionMatrix(k), ConfusionMatrix(k), ConfusionMatrix(k))
                  for label in labels} for S in args.intervals}
    inloop = {S: {label: ([], []) for label in labels} for S in args.intervals}
    fuse_s = {S: {label: [0.0, 0] for label in labels if label.endswith(TWO_SIDED_SUFFIX)}   # work (s), frames
              for S in args.intervals}
    kf_times, flow_times, n_total = [], [], 0
    kf_frames = {S: 0 for S in args.intervals}   # keyframes per interval over all snippets (mean cost per frame)
    res = {'config': {'seq': ' '.join(args.seqs), 'seqs': list(args.seqs), 'frames': 0, 'size': list(size),
                      'model': spec, 'device': args.device, 'backend': getattr(model, 'backend', None),
                      'flow': flow.describe(), 'intervals': list(args.intervals),
                      'threads': torch.get_num_threads(), 'weights_dir': args.weights_dir,
                      'variants': args.variants, 'cheap': {}, 'weights': {}, 'seen': {}, 'phase': phase}}
    video = getattr(args, 'video', None)
    if video:   # no labels: the reference is the keyframe network's own per-frame output
        args.seqs = [Path(video).stem]
        res['config'].update(seq=args.seqs[0], seqs=list(args.seqs), video=str(video))
    for seq in args.seqs:
        if video:
            imgs, gts = load_video(Path(video), size, args.frames), None
        else:
            imgs, gts = load_snippet(root, seq, size, args.frames)
        n = len(imgs)
        n_total += n
        for S in args.intervals:
            kf_frames[S] += sum(1 for i in range(n) if is_kf(i, S))
        sems, pf_labels = [], []
        model.segment(imgs[0])  # warm-up
        for i in tqdm(range(n), desc=f'{seq}: keyframe network', mininterval=5):
            t0 = time.perf_counter()
            seg = model.segment(imgs[i])
            kf_times.append(time.perf_counter() - t0)
            sems.append(semantics_from_segmentation(seg, cmap, size))
            cm_pf.update(seg.labels, seg.labels if gts is None else gts[i])
            pf_labels.append(seg.labels)
        if gts is None:
            gts = pf_labels
        bwd, fwd = [None], [None]
        grays = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in imgs]
        seq_flow_times = []
        for i in range(1, n):
            t0 = time.perf_counter()
            f_fwd, f_bwd = flow.forward_backward(grays[i - 1], grays[i], native=True)
            seq_flow_times.append(time.perf_counter() - t0)
            bwd.append(f_bwd)
            fwd.append(f_fwd)
        flow_times += seq_flow_times
        flow_pair_s = float(np.median(seq_flow_times)) if seq_flow_times else 0.0
        built = {}
        for S in args.intervals:
            for label, mode, weights, opts in entries:
                cm_all, cm_prop, cm_net = pooled[S][label]
                costs, frame_costs = inloop[S][label]
                base = model
                if mode in CACHE_MODES:   # splits the network: the torch one (same weights)
                    if torch_model is None:
                        torch_model = load_model(spec, backend='torch', input_size=size, device=args.device)
                    base = torch_model
                w = weights_for(weights, seq)
                if mode in GRAPH_CACHE_MODES:   # on the keyframe network's backend (onnxruntime: exported split)
                    from .caching import CachedFeatureRefresher
                    module = CachedFeatureRefresher(base, levels=int(mode[5]))
                else:
                    module = make_temporal_module(mode, base, weights=w, device=args.device, schedule=S, **opts)
                built[label] = module
                if w is not None:
                    res['config']['weights'].setdefault(label, {})[seq] = str(w)
                trained = _trained_on(module)
                if seq in trained or (video and 'udacity' in trained and Path(video).name == UDACITY_VIDEO):
                    res['config']['seen'].setdefault(label, [])
                    if seq not in res['config']['seen'][label]:
                        res['config']['seen'][label].append(seq)
                if hasattr(module, 'cheap'):
                    res['config']['cheap'][label] = module.cheap.spec
                if getattr(getattr(module, 'net', None), 'gate_classes', False):
                    res['config'].setdefault('gated', [])
                    if label not in res['config']['gated']:
                        res['config']['gated'].append(label)
                if mode in CACHE_MODES:
                    for i in tqdm(range(n), desc=f'{seq}: S={S} {label}', mininterval=5):
                        r = module.process(imgs[i], keyframe=is_kf(i, S))
                        cm_all.update(r.labels, gts[i])
                        if not r.is_keyframe:
                            cm_prop.update(r.labels, gts[i])
                            cm_net.update(r.labels, pf_labels[i])
                            costs.append(r.timings['total'])
                            frame_costs.append(r.timings['total'])
                else:
                    prop = TemporalPropagator(refiner=module)
                    buf = TwoSidedBuffer(fill_holes=prop.fill_holes) if two_sided and mode in PROP_MODES else None
                    fused = []
                    for i in tqdm(range(n), desc=f'{seq}: S={S} {label}', mininterval=5):
                        if is_kf(i, S):   # (the graph's caching / region context: the keyframe with its maps)
                            prop.set_keyframe(i, module.keyframe_semantics(imgs[i], size)[0]
                                              if hasattr(module, 'keyframe_semantics') else sems[i])
                            out = prop.step(i, None, None, imgs[i] if module is not None else None)
                        else:
                            out = prop.step(i, bwd[i], fwd[i], imgs[i] if module is not None else None)
                            costs.append(out.timings.get('refine', 0.0))
                            frame_costs.append(flow_pair_s + sum(out.timings.get(x, 0.0)
                                                                 for x in ('warp', 'iam', 'refine')))
                            cm_prop.update(out.labels, gts[i])
                            cm_net.update(out.labels, pf_labels[i])
                        cm_all.update(out.labels, gts[i])
                        if buf is not None:   # the flows into a keyframe link it to the frames before
                            t0 = time.perf_counter()
                            fused += buf.push(out, fwd[i], flow_bwd=bwd[i])
                            fuse_s[S][label + TWO_SIDED_SUFFIX][0] += time.perf_counter() - t0
                    if buf is not None:
                        fused += buf.flush()
                        acc = fuse_s[S][label + TWO_SIDED_SUFFIX]
                        acc[1] += sum(1 for i in range(n) if not is_kf(i, S))
                        cm2_all, cm2_prop, cm2_net = pooled[S][label + TWO_SIDED_SUFFIX]
                        for o in fused:
                            i = o.frame_id
                            cm2_all.update(o.labels, gts[i])
                            if not is_kf(i, S):
                                cm2_prop.update(o.labels, gts[i])
                                cm2_net.update(o.labels, pf_labels[i])
    res['config']['frames'] = n_total
    res['keyframe_network_s'] = float(np.median(kf_times))
    res['flow_pair_s'] = float(np.median(flow_times)) if flow_times else 0.0
    res['per_frame'] = _iou_row(cm_pf)
    res['intervals'] = {}
    for S in args.intervals:
        rows = {}
        for label in labels:
            cm_all, cm_prop, cm_net = pooled[S][label]
            costs, frame_costs = inloop[S][label]
            row = _iou_row(cm_all)
            row['miou_propagated'] = cm_prop.miou()
            row['agree_per_frame'] = cm_net.pixel_accuracy()   # propagated frames vs the network's labels
            # in-loop timings (informative only; the table uses the interleaved measurement below)
            row['inloop_module_s'] = float(np.median(costs)) if costs else 0.0
            row['inloop_frame_s'] = float(np.median(frame_costs)) if frame_costs else 0.0
            row['keyframe_fraction'] = kf_frames[S] / max(n_total, 1)
            rows[label] = row
        add_recovered(res['per_frame'], rows)
        res['intervals'][str(S)] = rows
    # costs: interleaved rounds on the last snippet, with the modules built for it
    costs = measure_costs(model, built, imgs, sems, bwd, fwd, flow, rounds=args.cost_rounds)
    res['costs'] = costs
    for S, rows in res['intervals'].items():
        for label, row in rows.items():
            if label.endswith(TWO_SIDED_SUFFIX):
                # the forward row's costs plus the two-sided work (checks, trust, carrying back, fusing) per
                # propagated frame, in the loop, against the in-loop keyframe pass
                tot, nf = fuse_s[int(S)][label]
                extra = (tot / nf if nf else 0.0) / res['keyframe_network_s']
                base = costs[label[:-len(TWO_SIDED_SUFFIX)]]
                row.update({'module_s': base['module_s'] + (tot / nf if nf else 0.0), 'two_sided_rel': extra,
                            'cost_rel': base['cost_rel'] + extra, 'frame_rel': base['frame_rel'] + extra,
                            'delayed': True})
            else:
                row.update(costs[label])
    add_same_compute(res)
    return res


def add_same_compute(res: dict) -> None:
    """Every row's ``mean_rel`` (:func:`mean_cost_rel`) and ``res['same_compute']`` (:func:`same_compute`). A
    result saved before rows recorded their ``keyframe_fraction`` gets it from its config (:func:`_kf_fraction`)."""
    for S, rows in res.get('intervals', {}).items():
        for row in rows.values():
            if 'keyframe_fraction' not in row:
                row['keyframe_fraction'] = _kf_fraction(res, int(S))
            row['mean_rel'] = mean_cost_rel(row)
    res['same_compute'] = same_compute(res)


def mean_cost_rel(row: dict) -> float | None:
    """Mean cost per frame of a row over the whole sequence, keyframes included, in keyframe passes:
    ``f + (1 - f) * frame_rel`` with ``f`` its share of keyframes (``cost_rel`` where a row has no
    whole-frame cost). What a robot pays per frame for the row's accuracy."""
    f = row.get('keyframe_fraction')
    per = row.get('frame_rel') if row.get('frame_rel') is not None else row.get('cost_rel')
    if f is None or per is None:
        return None
    return float(f + (1.0 - f) * per)


def warp_line(res: dict, key: str = 'miou') -> list:
    """Plain warping's 'more keyframes' line: (mean cost per frame, ``key``, interval) for per-frame
    segmentation (cost 1, interval '1') and the 'warp' row of every interval run, sorted by cost."""
    pf = (res.get('per_frame') or {}).get(key)
    pts = [(1.0, pf, '1')] if pf is not None else []
    for S, rows in res.get('intervals', {}).items():
        w = rows.get('warp')
        if w and w.get('mean_rel') is not None and w.get(key) is not None:
            pts.append((w['mean_rel'], w[key], S))
    return sorted(pts)


def same_compute(res: dict) -> list:
    """Each temporal module against spending its compute on keyframes instead.

    The reference is plain warping's accuracy as a function of its mean cost per frame (``mean_cost_rel``):
    one point per interval run, plus per-frame segmentation (cost 1). Between two measured points it is
    interpolated linearly (what a schedule mixing the two intervals would give, roughly). For every other
    row: its mean cost, its mIoU, warping's mIoU at that cost (None outside the measured range) and the
    difference (> 0: the module beats more keyframes); the same on pixel accuracy (``*_pixel``: on a video
    without labels, the agreement with the per-frame network, which rare-class jitter moves less than its
    mIoU). Needs plain warping at two or more intervals to say much; with one, only rows that cost no
    more than it, or per-frame, are bracketed."""
    ivs = res.get('intervals', {})

    def at(pts, c):
        for (c0, m0, s0), (c1, m1, s1) in zip(pts, pts[1:]):
            if c0 <= c <= c1:
                return (m0 if c1 - c0 < 1e-12 else m0 + (m1 - m0) * (c - c0) / (c1 - c0)), [s0, s1]
        return None, None

    lines = {key: warp_line(res, key) for key in ('miou', 'pixel_acc')}
    out = []
    for S, rows in ivs.items():
        for label, r in rows.items():
            c = r.get('mean_rel')
            if label == 'warp' or c is None or r.get('miou') is None:
                continue
            ref, between = at(lines['miou'], c)
            e = {'interval': S, 'mode': label, 'mean_rel': c, 'miou': r['miou'], 'warp_miou': ref,
                 'warp_between': between, 'gain': None if ref is None else r['miou'] - ref,
                 'delayed': bool(r.get('delayed'))}
            if r.get('pixel_acc') is not None:
                ref_px, _ = at(lines['pixel_acc'], c)
                e.update(pixel_acc=r['pixel_acc'], warp_pixel_acc=ref_px,
                         gain_pixel=None if ref_px is None else r['pixel_acc'] - ref_px)
            out.append(e)
    return out


def add_recovered(per_frame: dict, rows: dict) -> None:
    """``recovered`` (on mIoU) and ``recovered_gt`` (on mIoU-gt) of every row: the share of the
    warping drop (per-frame minus warp) won back; None without a 'warp' row or a drop."""
    if 'warp' not in rows:
        return
    for out, key in (('recovered', 'miou'), ('recovered_gt', 'miou_gt')):
        w = rows['warp'][key]
        drop = per_frame[key] - w if per_frame[key] is not None and w is not None else 0.0
        for row in rows.values():
            row[out] = (row[key] - w) / drop if drop > 1e-9 and row[key] is not None else None


def _p(v):
    return '   -  ' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{100 * v:6.1f}'


def _f3(v):
    return '-' if v is None else f'{v:.3f}'


def format_same_compute(res: dict) -> list:
    """Lines of the 'same compute on keyframes instead' section (``same_compute``); none without rows."""
    rows = res.get('same_compute') or []
    if not rows:
        return []
    lines = ["Same compute on keyframes instead: plain warping at a shorter interval with the row's mean cost per "
             "frame (mean/kf, keyframes included; interpolated between the intervals run, S=1 = per-frame)",
             f"{'method':<24}{'mean/kf':>9}{'mIoU':>7}{'warp at that cost':>19}{'between':>10}{'gain':>7}"
             f"{'pixel acc':>10}{'warp':>7}{'gain':>7}"]
    for e in rows:
        name = f"S={e['interval']} {e['mode']}"
        ref = '-' if e['warp_miou'] is None else f"{100 * e['warp_miou']:.1f}"
        btw = '-' if not e['warp_between'] else f"S={e['warp_between'][0]}-{e['warp_between'][1]}"
        gain = '-' if e['gain'] is None else f"{100 * e['gain']:+.1f}"
        px = [_p(e.get(k)).strip() for k in ('pixel_acc', 'warp_pixel_acc')]
        gpx = '-' if e.get('gain_pixel') is None else f"{100 * e['gain_pixel']:+.1f}"
        lines.append(f"{name:<24}{e['mean_rel']:9.3f}{_p(e['miou'])}{ref:>19}{btw:>10}{gain:>7}"
                     f"{px[0]:>10}{px[1]:>7}{gpx:>7}")
    return lines + ['']


def format_table(res: dict) -> str:
    c = res['config']
    lines = [f"Temporal modules on {c['seq']} ({c['frames']} frames, {c['size'][0]}x{c['size'][1]}, "
             f"keyframe network {c['model']} {1000 * res['keyframe_network_s']:.0f} ms/frame, "
             f"{c['threads']} thread(s)); mIoU vs "
             + ("the keyframe network's per-frame labels (a video without labels)" if c.get('video')
                else 'pseudo labels')
             + ''.join(f'; {m} cheap network {spec}' for m, spec in c.get('cheap', {}).items())
             + (f"; GRFP class gate on: {', '.join(c['gated'])}" if c.get('gated') else ''),
             f"{'method':<20}{'mIoU':>7}{'mIoU-gt':>8}{'mIoU-prop':>10}{'recovered':>10}{'rec-gt':>8}{'cost/kf':>9}{'frame/kf':>9}{'mean/kf':>9}{'agree-net':>10}"]
    for label, seen in (c.get('seen') or {}).items():
        lines.insert(1, f"WARNING: {label} was trained on {', '.join(seen)}: evaluated there on its own training data")
    lines.append(f"{'per-frame':<20}{_p(res['per_frame']['miou'])}{_p(res['per_frame']['miou_gt']):>8}{'':>10}{'':>10}{'':>8}{'1.000':>9}{'1.000':>9}{'1.000':>9}{'100.0':>10}")
    for S, rows in res['intervals'].items():
        for mode, r in rows.items():
            rec = [r.get(k) for k in ('recovered', 'recovered_gt')]
            rec_s = ['-' if v is None or mode == 'warp' else f'{100 * v:.0f}%' for v in rec]
            lines.append(f"{'S=' + S + ' ' + mode:<20}{_p(r['miou'])}{_p(r['miou_gt']):>8}{_p(r['miou_propagated']):>10}"
                         f"{rec_s[0]:>10}{rec_s[1]:>8}{r['cost_rel']:9.3f}{r['frame_rel']:9.3f}"
                         f"{_f3(r.get('mean_rel')):>9}{_p(r['agree_per_frame']):>10}")
    lines.append('')
    lines += format_same_compute(res)
    names = CITYSCAPES.names
    cols = [('per-frame', res['per_frame'])] + [(f'S{S} {m}', r) for S, rows in res['intervals'].items()
                                                 for m, r in rows.items()]
    lines.append('per-class IoU (%)')
    lines.append(f"{'class':<14}" + ''.join(f'{h[:10]:>11}' for h, _ in cols))
    for j, nm in enumerate(names):
        lines.append(f'{nm[:13]:<14}' + ''.join(f'{_p(r["iou"][j]):>11}' for _, r in cols))
    return '\n'.join(lines)


GOAL = {'recovered': 0.5, 'cost': 0.25}   # issue 4: >= half of the S=5 drop at <= 1/4 of a keyframe


def plot_tradeoff(res: dict, path, interval: str | None = None) -> Path | None:
    """Recovered share of the warping drop vs cost / keyframe at one interval (default: the largest),
    one marker per module, for the module alone (filled) and the whole propagated frame (open,
    joined; delayed two-sided rows as diamonds); the issue-4 goal region shaded. None when there is
    nothing to plot (no 'warp' row)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure
    ivs = sorted(res.get('intervals', {}), key=int)
    if not ivs:
        return None
    S = interval if interval is not None else ivs[-1]
    rows = {m: r for m, r in res['intervals'][str(S)].items()
            if m != 'warp' and r.get('recovered') is not None and r.get('cost_rel') is not None}
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    ys = [100 * r['recovered'] for r in rows.values()]
    lo = max(min(ys + [0.0]) - 5, -30.0)        # a module far below 0 is drawn at the edge, its value named
    hi = max(ys + [100 * GOAL['recovered']]) + 8
    ax.fill_between([0, GOAL['cost']], 100 * GOAL['recovered'], hi, color='tab:green', alpha=0.12, lw=0,
                    label='goal: >= 50 % at <= 1/4 keyframe')
    ax.axhline(0, color='k', lw=0.8)
    cmap = plt.get_cmap('tab20')
    for i, (m, r) in enumerate(sorted(rows.items())):
        c = cmap(i % 20)
        y = 100 * r['recovered']
        yc = max(y, lo + 2)
        name = m if y >= lo + 2 else f'{m} ({y:.0f} %, off the scale)'
        if r.get('delayed'):
            name += ' (delayed: waits for the next keyframe)'
        ax.scatter(r['cost_rel'], yc, color=c, s=40, zorder=3, label=name,
                   marker='v' if y < lo + 2 else ('D' if r.get('delayed') else 'o'))
        if r.get('frame_rel') is not None:
            ax.scatter(r['frame_rel'], yc, facecolors='none', edgecolors=c, s=40, zorder=3)
            ax.plot([r['cost_rel'], r['frame_rel']], [yc, yc], color=c, lw=1, zorder=2)
    ax.set_ylim(lo, hi)
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5), frameon=False)
    c = res['config']
    where = f"video {Path(c['video']).name}" if c.get('video') else f"{c['seq']} ({c['frames']} frames)"
    ax.set_xlabel('cost per propagated frame / keyframe network (filled: module, open: whole frame)')
    ax.set_ylabel(f'recovered share of the S={S} warping drop (%)')
    ax.set_title(f'Temporal modules at S={S}: accuracy won back vs cost\n{where}, {c["size"][0]}x{c["size"][1]}',
                 fontsize=10)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_same_compute(res: dict, path) -> Path | None:
    """mIoU against the mean cost per frame (keyframes included) of every row at every interval, with plain
    warping's intervals and per-frame segmentation joined as the 'more keyframes' line: a module above it
    beats spending its compute on keyframes. None when no module row has a mean cost (``same_compute``)."""
    rows = res.get('same_compute') or []
    if not rows:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure
    fig, ax = plt.subplots(figsize=(8.5, 5))
    pf = (res.get('per_frame') or {}).get('miou')
    pts = warp_line(res)
    ax.plot([c for c, _, _ in pts], [100 * m for _, m, _ in pts], '-o', color='k', lw=1.5, ms=5, zorder=2,
            label='plain warping, more keyframes (S=1: per-frame)')
    for c, m, S in pts:
        ax.annotate(f'S={S}', (c, 100 * m), textcoords='offset points', xytext=(4, -10), fontsize=7)
    # issue 4's goal at the largest interval, in these coordinates: half its warping drop won back, at a
    # module cost per propagated frame of at most 1/4 of a keyframe (whole frame, with the flow and warp)
    S = max(res['intervals'], key=int)
    w = res['intervals'][S].get('warp') or {}
    if w.get('keyframe_fraction') is not None and w.get('miou') is not None and pf is not None:
        f = w['keyframe_fraction']
        x1 = f + (1 - f) * GOAL['cost']
        y0 = 100 * (w['miou'] + GOAL['recovered'] * (pf - w['miou']))
        ax.fill_between([0, x1], y0, 100 * pf, color='tab:green', alpha=0.12, lw=0,
                        label=f'goal at S={S}: >= 50 % of its drop at <= 1/4 keyframe per propagated frame')
    cmap = plt.get_cmap('tab10')
    modes = sorted({e['mode'] for e in rows})
    for i, mode in enumerate(modes):
        es = sorted((e for e in rows if e['mode'] == mode), key=lambda e: e['mean_rel'])
        delayed = es[0]['delayed']
        ax.plot([e['mean_rel'] for e in es], [100 * e['miou'] for e in es], '--' if delayed else '-',
                marker='D' if delayed else 's', color=cmap(i % 10), lw=1, ms=5, zorder=3,
                label=mode + (' (delayed: waits for the next keyframe)' if delayed else ''))
        for e in es:
            ax.annotate(f"S={e['interval']}", (e['mean_rel'], 100 * e['miou']), textcoords='offset points',
                        xytext=(4, 3), fontsize=6, color=cmap(i % 10))
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5), frameon=False)
    c = res['config']
    where = f"video {Path(c['video']).name}" if c.get('video') else f"{c['seq']} ({c['frames']} frames)"
    ax.set_xlabel('mean cost per frame, keyframes included / keyframe network pass')
    ax.set_ylabel('mIoU (%)' + (' vs the per-frame network' if c.get('video') else ' vs pseudo labels'))
    ax.set_title(f'Temporal modules against more keyframes at the same compute\n{where}, '
                 f'{c["size"][0]}x{c["size"][1]}', fontsize=10)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='temporal_bench', description=__doc__.splitlines()[0])
    p.add_argument('--seqs', '--seq', dest='seqs', nargs='+', default=['seq0003'],
                   help='held-out snippet(s); with several, the table pools them and "{seq}" in weights '
                        'paths (--weights-dir, --variants) names each one\'s weights (cross-validation: '
                        'train one run per held-out snippet, see BENCHMARKS.md section 7)')
    p.add_argument('--size', default='512x256', help='working size WxH (= keyframe network input)')
    p.add_argument('--model', default='auto', help='keyframe network (auto: s2.0 at the size)')
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--video', default=None,
                   help='evaluate on a video instead of the snippets (no labels: against the keyframe '
                        "network's own per-frame labels, so per-frame = 100)")
    p.add_argument('--intervals', type=int, nargs='+', default=[2, 5])
    p.add_argument('--modes', nargs='+', default=list(PROP_MODES + CACHE_MODES))
    p.add_argument('--flow-preset', default='ultrafast')
    p.add_argument('--weights-dir', default=None, help='temporal weights (default: packaged)')
    p.add_argument('--variants', nargs='+', default=None, metavar='LABEL=MODE:WEIGHTS',
                   help='extra rows: a learned mode with other weights (e.g. grfp-b=grfp:runs/x/grfp.pt)')
    p.add_argument('--device', default='cpu', help='cpu or cuda (network and modules)')
    p.add_argument('--backend', default='auto',
                   help='keyframe network backend (auto: the fastest exact one, onnxruntime on the CPU, as '
                        'deployed); the cheap networks of GRFP/DAVSS use the same auto choice; caching splits '
                        'the torch network')
    p.add_argument('--two-sided', action='store_true',
                   help='also a delayed row LABEL+2s for every propagator row: its outputs fused with the next '
                        'keyframe carried back (core/bidirectional.py, as vidseg run --two-sided); cost = the '
                        "row's plus the two-sided work per propagated frame, timed in the loop")
    p.add_argument('--phase', type=int, default=0,
                   help='keyframe phase: frame 0, then every S-th frame from this one on (default 0: every S-th '
                        'frame); how much a result depends on where the keyframes fall')
    p.add_argument('--cost-rounds', type=int, default=7, help='interleaved timing rounds')
    p.add_argument('--threads', type=int, default=1, help='torch threads (0 = leave as is)')
    p.add_argument('--shared', default=None)
    p.add_argument('--cheap-candidates', nargs='+', default=None, metavar='NAME@WxH',
                   help='instead of the table: cost and accuracy of candidate cheap networks of GRFP/DAVSS')
    p.add_argument('--out', default=None,
                   help='JSON output (default runs/temporal_bench.json, runs/cheap_candidates.json)')
    p.add_argument('--replot', default=None, metavar='JSON',
                   help='only redraw the trade-off plot (<JSON stem>_tradeoff.png) of a saved table')
    args = p.parse_args(argv)
    if args.replot:
        try:
            res = json.loads(Path(args.replot).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f'cannot read a bench-temporal result from {args.replot}: {e}') from None
        if not isinstance(res, dict):
            raise InputError(f'{args.replot} is not a bench-temporal result')
        if 'intervals' in res and 'same_compute' not in res:   # saved before the mean cost existed
            add_same_compute(res)
        pngs = [p for p in (plot_tradeoff(res, _plot_path(Path(args.replot))),
                            plot_same_compute(res, _plot_path(Path(args.replot), 'compute'))) if p]
        print(f"wrote {' and '.join(map(str, pngs))}" if pngs else f'{args.replot}: no rows with a recovered share to plot')
        return 0
    if args.cheap_candidates:
        res = run_cheap(args)
        table = format_cheap(res)
        args.out = args.out or 'runs/cheap_candidates.json'
    else:
        if 'warp' not in args.modes:
            args.modes = ['warp'] + list(args.modes)
        res = run(args)
        table = format_table(res)
        args.out = args.out or 'runs/temporal_bench.json'
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix('.txt').write_text(table + '\n')
    pngs = [] if args.cheap_candidates else [p for p in (plot_tradeoff(res, _plot_path(out)),
                                                         plot_same_compute(res, _plot_path(out, 'compute'))) if p]
    print(f'wrote {out} and {out.with_suffix(".txt")}' + ''.join(f' and {p}' for p in pngs))
    return 0


def _plot_path(out: Path, kind: str = 'tradeoff') -> Path:
    return out.with_name(f'{out.stem}_{kind}.png')


def _kf_fraction(res: dict, S: int) -> float | None:
    """The keyframe share of a saved result that did not record it: frame 0, then every S-th from the phase
    on, in each of its snippets of config.frames / len(seqs) frames."""
    c = res.get('config', {})
    seqs = c.get('seqs') or [c.get('seq')]
    n = int(c.get('frames', 0)) // max(len(seqs), 1)
    if n < 1:
        return None
    ph = int(c.get('phase', 0) or 0)
    return sum(1 for i in range(n) if i == 0 or (i >= ph and (i - ph) % S == 0)) / n


if __name__ == '__main__':   # same as `vidseg bench-temporal` (one-line errors, exit 2)
    import sys
    from vidseg_ros.cli import main as _vidseg
    raise SystemExit(_vidseg(['bench-temporal'] + sys.argv[1:]))
