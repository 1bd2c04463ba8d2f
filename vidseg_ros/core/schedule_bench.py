"""``vidseg bench-schedules``: how much can *where* the keyframes go win back for plain warping?

For every snippet of ``cityscapes_seq`` and every pair (keyframe k, frame t >= k) it propagates the keyframe
network's labels of frame k to frame t with the same flow and warping as ``vidseg bench`` (DIS at the
working resolution, labels warped frame to frame, evaluated at full resolution against the pseudo labels)
and keeps the confusion matrix of each pair. Any keyframe schedule is then scored exactly, without running
anything again: frame t takes its labels from the newest keyframe <= t. Schedules compared at the keyframe
budget of a fixed interval S (the same number of keyframes over all snippets):

* ``fixed S``: a keyframe every S frames (``vidseg bench``'s ``warp_sS`` rows, reproduced exactly);
* ``oracle``: the best placement found by local search (move one keyframe while pooled mIoU improves),
  using the labels -- an upper bound for any schedule, not a schedule;
* ``oracle counts``: the best number of keyframes per snippet, evenly spaced within it (labels used too);
* ``trigger SIGNAL``: causal schedules that a robot can run: a keyframe at frame t when the evidence
  gathered since the last keyframe up to frame t-1 (the decision is taken when frame t arrives) passes a
  threshold. The threshold is the smallest that keeps within the budget (a rate, not an accuracy,
  choice). Signals (``SIGNALS``): ``iam`` (IAM inconsistent fraction of the last propagated frame: the
  ``AdaptiveSchedule`` signal), ``iam_sum`` (that fraction summed since the keyframe), ``motion`` (mean
  flow magnitude, px, summed), ``photo`` (mean photometric residual of the backward-warped previous
  frame, summed), ``fb`` (fraction of pixels failing the forward-backward flow check, summed),
  ``entered`` (fraction of pixels that entered the view, summed), ``iam_objects`` (fraction of pixels the
  IAM flags *and* the warped labels call an object -- pole, light, sign, person, rider and vehicles, the
  small classes that dominate the mIoU loss -- summed).

**Where the loss of a fixed interval sits** (``thin_oracle``, an analysis, not a schedule): the same
propagated labels, but inside boxes around the warped *thin* objects (pole, light, sign, person, rider,
motorcycle, bicycle; :data:`THIN_CLASSES`) the pixels that either map calls thin take the keyframe network's
own labels *of that frame* (:func:`paste_thin_oracle`). It uses the network on every frame, so it is an
upper bound for any propagation module that repairs thin objects inside such boxes; the mean box area
says how much of the frame such a module would have to look at.

Writes JSON, a text table and a plot (mIoU drop vs keyframes for every schedule family).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError, InputError, VidsegError
from .metrics import ConfusionMatrix

SIGNALS = ('iam', 'iam_sum', 'iam_objects', 'motion', 'photo', 'fb', 'entered')
# 'object' classes per class set (Cityscapes categories object / human / vehicle; CamVid's counterparts)
OBJECT_CLASSES = {'cityscapes': (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18), 'camvid': (2, 6, 8, 9, 10)}
# thin objects (a few pixels wide at the working resolution): pole, light, sign, person, rider, motorcycle,
# bicycle; CamVid pole, sign, pedestrian, bicyclist
THIN_CLASSES = {'cityscapes': (5, 6, 7, 11, 12, 17, 18), 'camvid': (2, 6, 9, 10)}
THIN_DILATE, THIN_MARGIN, THIN_MIN_AREA = 4, 8, 10   # px at the working resolution


def thin_box_mask(labels: np.ndarray, classes, dilate: int = THIN_DILATE, margin: int = THIN_MARGIN,
                  min_area: int = THIN_MIN_AREA) -> np.ndarray:
    """Boolean mask of the boxes around the thin objects of ``labels``: the thin-class pixels dilated by
    ``dilate`` px, one bounding box per connected component of at least ``min_area`` px, grown by
    ``margin`` px and clipped to the frame."""
    labels = np.asarray(labels)
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    thin = np.isin(labels, np.asarray(classes, labels.dtype)).view(np.uint8) if len(classes) else None
    if thin is None or not thin.any():
        return out
    if dilate > 0:
        thin = cv2.dilate(thin, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(thin, connectivity=8)
    for x, y, bw, bh, area in stats[1:]:
        if area >= min_area:
            out[max(0, y - margin):min(h, y + bh + margin), max(0, x - margin):min(w, x + bw + margin)] = True
    return out


def paste_thin_oracle(warped: np.ndarray, frame_labels: np.ndarray, classes, **box) -> tuple:
    """(labels, box area fraction): ``warped`` with the pixels inside :func:`thin_box_mask` (boxes around
    the warped thin objects) that either map calls thin replaced by ``frame_labels`` (the network's own
    labels of this frame, same size)."""
    if warped.shape != frame_labels.shape:
        raise InputError(f'label maps differ in size: {warped.shape} and {frame_labels.shape}')
    mask = thin_box_mask(warped, classes, **box)
    cls = np.asarray(classes, warped.dtype)
    sel = mask & (np.isin(warped, cls) | np.isin(frame_labels, cls))
    out = warped.copy()
    out[sel] = frame_labels[sel]
    return out, float(mask.mean())


@dataclass
class PairStudy:
    """Per snippet: ``cm[seq][(k, t)]`` = (mat, missed) of frame t propagated from keyframe k; ``frame_signals``
    [seq][name][t] (flow between t-1 and t; index 0 unused); ``iam[seq][(k, t)]`` IAM fraction at t."""

    num_classes: int
    seqs: list
    frames: dict                      # seq -> number of frames
    cm: dict = field(default_factory=dict)
    iam: dict = field(default_factory=dict)
    iam_objects: dict = field(default_factory=dict)   # seq -> {(k, t): IAM-flagged object pixels / pixels}
    frame_signals: dict = field(default_factory=dict)
    cm_thin: dict = field(default_factory=dict)       # seq -> {(k, t): (mat, missed)} with paste_thin_oracle
    thin_area: dict = field(default_factory=dict)     # seq -> {(k, t): box area fraction}

    def score(self, keyframes: dict, thin_oracle: bool = False) -> tuple:
        """(pooled mIoU, keyframe count) of a schedule {seq: keyframe indices (0 is always one)}."""
        mat, missed = self._sum(keyframes, thin_oracle)
        return _miou(mat, missed, self.num_classes), sum(len(set(keyframes[s]) | {0}) for s in self.seqs)

    def metrics(self, keyframes: dict, thin_oracle: bool = False) -> dict:
        """mIoU, pixel accuracy and per-class IoU (NaN: class absent) of a schedule."""
        cm = ConfusionMatrix(self.num_classes)
        cm.mat, cm.missed = self._sum(keyframes, thin_oracle)
        return {'miou': cm.miou(), 'pixel_accuracy': cm.pixel_accuracy(),
                'iou': [None if np.isnan(v) else float(v) for v in cm.iou()]}

    def thin_box_area(self, keyframes: dict) -> float:
        """Mean box area fraction of :func:`paste_thin_oracle` over a schedule's propagated frames."""
        vals = []
        for s in self.seqs:
            kfs = set(keyframes[s]) | {0}
            vals += [self.thin_area[s][(max(k for k in kfs if k <= t), t)] for t in range(self.frames[s])
                     if t not in kfs]
        return float(np.mean(vals)) if vals else 0.0

    def _seq_sum(self, seq, kfs, thin_oracle: bool = False):
        table = (self.cm_thin if thin_oracle else self.cm)[seq]
        kfs = sorted(set(kfs) | {0})
        mat = np.zeros((self.num_classes, self.num_classes), np.int64)
        missed = np.zeros(self.num_classes, np.int64)
        j = 0
        for t in range(self.frames[seq]):
            while j + 1 < len(kfs) and kfs[j + 1] <= t:
                j += 1
            m, x = table[(kfs[j], t)]
            mat += m
            missed += x
        return mat, missed

    def _sum(self, keyframes, thin_oracle: bool = False):
        parts = [self._seq_sum(s, keyframes[s], thin_oracle) for s in self.seqs]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def evidence(self, name: str, seq: str, k: int, t: int) -> float:
        """The trigger signal ``name`` at frame t for the keyframe k (accumulated over k+1..t)."""
        if name == 'iam':
            return self.iam[seq][(k, t)]
        if name in ('iam_sum', 'iam_objects'):
            src = self.iam if name == 'iam_sum' else self.iam_objects
            return float(sum(src[seq][(k, u)] for u in range(k + 1, t + 1)))
        if name not in SIGNALS:
            raise ConfigError(f'unknown trigger signal {name!r} (known: {", ".join(SIGNALS)})')
        sig = self.frame_signals[seq][name]
        return float(sum(sig[u] for u in range(k + 1, t + 1)))


def _miou(mat, missed, k):
    cm = ConfusionMatrix(k)
    cm.mat, cm.missed = mat, missed
    return cm.miou()


def frame_signals(flow_bwd, flow_fwd, gray_prev, gray_cur) -> dict:
    """Per-frame trigger signals from the flows between two frames (computed on the flow's own grid; motion in
    pixels of the working resolution, the others fractions / grey levels)."""
    from .iam import flow_inconsistency
    from .region import entered_view
    from .warp import warp_image
    b = np.asarray(flow_bwd, np.float32)
    fh, fw = b.shape[:2]
    g0 = cv2.resize(gray_prev, (fw, fh), interpolation=cv2.INTER_AREA).astype(np.float32)
    g1 = cv2.resize(gray_cur, (fw, fh), interpolation=cv2.INTER_AREA).astype(np.float32)
    warped = warp_image(g0, b)
    px = gray_cur.shape[1] / fw   # flow values are in the flow grid's pixels: report working-resolution px
    return {'motion': float(np.linalg.norm(b, axis=2).mean()) * px,
            'photo': float(np.abs(warped - g1).mean()),
            'fb': float(flow_inconsistency(b, flow_fwd).mean()),
            'entered': float(entered_view(b, (fw, fh)).mean())}


def _flagged_objects(mask, labels, objects) -> float:
    """Fraction of pixels with IAM mask > 0.5 whose (working-resolution) label is an object class."""
    if mask is None or not len(objects):
        return 0.0
    m = np.asarray(mask)
    if m.shape != labels.shape:
        m = cv2.resize(m.astype(np.float32), (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_LINEAR)
    return float(((m > 0.5) & np.isin(labels, objects)).mean())


def pair_study(net, root: Path, seqs, frames: int = 30, scale: int = 2, flow=None, progress=True) -> PairStudy:
    """Propagate every frame's keyframe-network labels to every later frame of its snippet (see module doc)."""
    from tqdm import tqdm

    from .bench import _load_seq
    from .flow import FlowEstimator
    from .pipeline import working_size
    from .propagation import Propagator, semantics_from_segmentation

    flow = flow or FlowEstimator('dis', preset='ultrafast')
    k = net.class_set.num_classes
    class_map = np.asarray(net.output_to_class, np.uint8)
    objects = np.asarray(OBJECT_CLASSES.get(net.class_set.name, ()), np.uint8)
    thin = THIN_CLASSES.get(net.class_set.name, ())
    study = PairStudy(k, list(seqs), {})
    for seq in seqs:
        _, imgs, gts = _load_seq(Path(root) / seq, int(frames))
        n = len(imgs)
        if n < 2:
            raise InputError(f'{seq}: a schedule study needs at least 2 frames, got {n}')
        size = (imgs[0].shape[1], imgs[0].shape[0])
        ws = working_size(size, scale)
        grays = [cv2.cvtColor(cv2.resize(im, ws, interpolation=cv2.INTER_AREA) if ws != size else im,
                              cv2.COLOR_RGB2GRAY) for im in imgs]
        sems = [semantics_from_segmentation(net.segment(im), class_map, ws)
                for im in tqdm(imgs, desc=f'{seq}: keyframe network', disable=not progress, leave=False)]
        flows = [None] + [(flow.compute_native(grays[t], grays[t - 1]), flow.compute_native(grays[t - 1], grays[t]))
                          for t in range(1, n)]
        sig = {name: [0.0] * n for name in ('motion', 'photo', 'fb', 'entered')}
        for t in range(1, n):
            for name, v in frame_signals(flows[t][0], flows[t][1], grays[t - 1], grays[t]).items():
                sig[name][t] = v
        study.frames[seq], study.frame_signals[seq] = n, sig
        cms, iams, objs, cms_thin, areas = {}, {}, {}, {}, {}
        for kf in tqdm(range(n), desc=f'{seq}: keyframe -> later frames', disable=not progress, leave=False):
            prop = Propagator(warp=True, refiner=None, use_iam=True)
            prop.set_keyframe(kf, sems[kf])
            for t in range(kf, n):
                out = prop.step(t, None, None) if t == kf else prop.step(t, *flows[t])
                full = (gts[t].shape[1], gts[t].shape[0])
                cm = ConfusionMatrix(k).update(_at(out.labels, full), gts[t])
                cms[(kf, t)] = (cm.mat, cm.missed)
                if t == kf:
                    cms_thin[(kf, t)], areas[(kf, t)] = cms[(kf, t)], 0.0
                else:
                    lab, areas[(kf, t)] = paste_thin_oracle(out.labels, sems[t].labels, thin)
                    cm = ConfusionMatrix(k).update(_at(lab, full), gts[t])
                    cms_thin[(kf, t)] = (cm.mat, cm.missed)
                iams[(kf, t)] = float(out.inconsistent_fraction)
                objs[(kf, t)] = _flagged_objects(out.mask, out.labels, objects)
        study.cm[seq], study.iam[seq], study.iam_objects[seq] = cms, iams, objs
        study.cm_thin[seq], study.thin_area[seq] = cms_thin, areas
    return study


def _at(labels, size_wh):
    return labels if labels.shape[::-1] == tuple(size_wh) else \
        cv2.resize(labels, size_wh, interpolation=cv2.INTER_NEAREST)


# ------------------------------------------------------------------------------------------ schedules
def fixed(study: PairStudy, interval: int) -> dict:
    return {s: list(range(0, study.frames[s], int(interval))) for s in study.seqs}


def trigger(study: PairStudy, signal: str, threshold: float, lag: int = 1) -> dict:
    """Causal schedule: keyframe at t when the evidence since the last keyframe up to t - ``lag`` > threshold."""
    out = {}
    for s in study.seqs:
        kfs, k = [0], 0
        for t in range(1, study.frames[s]):
            u = t - lag
            if u > k and study.evidence(signal, s, k, u) > threshold:
                k = t
                kfs.append(t)
        out[s] = kfs
    return out


def trigger_curve(study: PairStudy, signal: str, lag: int = 1, points: int = 60) -> list:
    """[(threshold, keyframes, mIoU)] over thresholds at the quantiles of the signal's values."""
    vals = sorted({study.evidence(signal, s, k, t) for s in study.seqs for k in range(study.frames[s])
                   for t in range(k + 1, study.frames[s])})
    ths = sorted(set(float(v) for v in np.quantile(vals, np.linspace(0.0, 1.0, points)))) if vals else [0.0]
    out = []
    for th in ths:
        m, n = study.score(trigger(study, signal, th, lag))
        out.append((th, n, m))
    return out


def within_budget(curve, budget: int):
    """The smallest threshold whose schedule uses at most ``budget`` keyframes: (threshold, keyframes, mIoU)."""
    ok = [c for c in curve if c[1] <= budget]
    return min(ok, key=lambda c: c[0]) if ok else None


def oracle(study: PairStudy, budget: int, start: dict | None = None, max_moves: int = 500) -> tuple:
    """Local search for the best placement of ``budget`` keyframes (frame 0 of every snippet is one):
    move one keyframe (to any snippet) while pooled mIoU improves. Returns (schedule, mIoU, moves)."""
    seqs = study.seqs
    if budget < len(seqs):
        raise ConfigError(f'a budget of {budget} keyframes is less than one per snippet ({len(seqs)})')
    sched = {s: set(v) | {0} for s, v in (start or fixed(study, 5)).items()}
    while sum(len(v) for v in sched.values()) > budget:   # trim a start that is over budget
        s = max(seqs, key=lambda x: len(sched[x]))
        sched[s].discard(max(sched[s]))
    parts = {s: study._seq_sum(s, sched[s]) for s in seqs}

    def total(p):
        return _miou(sum(v[0] for v in p.values()), sum(v[1] for v in p.values()), study.num_classes)

    best, moves = total(parts), 0
    while sum(len(v) for v in sched.values()) < budget:   # fill an under-budget start greedily
        cands = [(s, a) for s in seqs for a in range(1, study.frames[s]) if a not in sched[s]]
        if not cands:
            break
        scored = []
        for s, a in cands:
            p = dict(parts)
            p[s] = study._seq_sum(s, sched[s] | {a})
            scored.append((total(p), s, a, p[s]))
        best, s, a, ps = max(scored, key=lambda x: x[0])
        sched[s].add(a)
        parts[s] = ps
    improved = True
    while improved and moves < max_moves:
        improved = False
        for s, r in [(s, r) for s in seqs for r in sorted(sched[s] - {0})]:
            for s2, a in [(s2, a) for s2 in seqs for a in range(1, study.frames[s2]) if a not in sched[s2]]:
                cand = {x: set(v) for x, v in sched.items()}
                cand[s].discard(r)
                cand[s2].add(a)
                p = dict(parts)
                p[s] = study._seq_sum(s, cand[s])
                p[s2] = study._seq_sum(s2, cand[s2])
                m = total(p)
                if m > best + 1e-9:
                    best, sched, parts, improved, moves = m, cand, p, True, moves + 1
                    break
            if improved:
                break
    return {s: sorted(v) for s, v in sched.items()}, best, moves


def oracle_counts(study: PairStudy, budget: int, max_per_seq: int | None = None) -> tuple:
    """Best number of evenly spaced keyframes per snippet with ``budget`` in all: (counts, schedule, mIoU)."""
    seqs = study.seqs
    best = None
    hi = max_per_seq or max(study.frames.values())
    for counts in itertools.product(range(1, hi + 1), repeat=len(seqs)):
        if sum(counts) != budget or any(c > study.frames[s] for c, s in zip(counts, seqs)):
            continue
        sched = {s: sorted({int(x) for x in np.floor(np.arange(c) * study.frames[s] / c)})
                 for s, c in zip(seqs, counts)}
        m, _ = study.score(sched)
        if best is None or m > best[2]:
            best = (dict(zip(seqs, counts)), sched, m)
    return best


# ------------------------------------------------------------------------------------------ the study
def run(study: PairStudy, intervals=(5, 10), fixed_intervals=(2, 3, 4, 5, 6, 8, 10), signals=SIGNALS,
        lag: int = 1, progress=True) -> dict:
    from tqdm import tqdm
    every = {s: list(range(study.frames[s])) for s in study.seqs}
    per_frame, n_all = study.score(every)
    pf_met = study.metrics(every)
    res = {'config': {'seqs': study.seqs, 'frames': sum(study.frames.values()), 'lag': lag,
                      'signals': list(signals)},
           'per_frame': {'miou': per_frame, 'keyframes': n_all, 'pixel_accuracy': pf_met['pixel_accuracy'],
                         'iou': pf_met['iou']},
           'fixed': {}, 'budgets': {}, 'curves': {}}
    for S in sorted(set(fixed_intervals) | set(intervals)):
        m, n = study.score(fixed(study, S))
        res['fixed'][str(S)] = {'miou': m, 'keyframes': n, 'drop': per_frame - m}
    curves = {sg: trigger_curve(study, sg, lag) for sg in tqdm(signals, desc='trigger signals', disable=not progress)}
    res['curves'] = {sg: [{'threshold': th, 'keyframes': n, 'miou': m, 'drop': per_frame - m} for th, n, m in c]
                     for sg, c in curves.items()}
    for S in tqdm(intervals, desc='oracle placements', disable=not progress):
        fx = fixed(study, S)
        budget = study.score(fx)[1]
        sched, m, moves = oracle(study, budget, start=fx)
        rows = {'fixed': {'miou': res['fixed'][str(S)]['miou'], 'keyframes': budget},
                'oracle': {'miou': m, 'keyframes': budget, 'schedule': sched, 'moves': moves}}
        oc = oracle_counts(study, budget, max_per_seq=min(max(study.frames.values()), 3 * budget // len(study.seqs)))
        if oc is not None:
            rows['oracle_counts'] = {'miou': oc[2], 'keyframes': budget, 'counts': oc[0]}
        for sg, c in curves.items():
            b = within_budget(c, budget)
            if b is not None:
                rows[f'trigger_{sg}'] = {'miou': b[2], 'keyframes': b[1], 'threshold': b[0]}
        scheds = {'fixed': fx, 'oracle': sched}
        for name, r in rows.items():
            r['drop'] = per_frame - r['miou']
            if name in scheds:   # where the oracle's gain sits: pixel accuracy and per-class IoU
                met = study.metrics(scheds[name])
                r['pixel_accuracy'], r['iou'] = met['pixel_accuracy'], met['iou']
        res['budgets'][str(S)] = {'budget': budget, 'rows': rows}
    if study.cm_thin:
        res['thin_oracle'] = {}
        for S in intervals:
            fx = fixed(study, S)
            met = study.metrics(fx, thin_oracle=True)
            res['thin_oracle'][str(S)] = {'miou': met['miou'], 'drop': per_frame - met['miou'],
                                          'keyframes': study.score(fx)[1], 'box_area': study.thin_box_area(fx),
                                          'pixel_accuracy': met['pixel_accuracy'], 'iou': met['iou'],
                                          'fixed_drop': res['fixed'][str(S)]['drop']}
    return res


def format_table(res: dict) -> str:
    c = res['config']
    lines = [f"Keyframe schedules for plain warping ({', '.join(c['seqs'])}; {c['frames']} frames): mIoU vs "
             f"pseudo labels, per-frame {100 * res['per_frame']['miou']:.2f}; triggers decide at frame t from "
             f"evidence up to t-{c['lag']}"]
    for S, b in res['budgets'].items():
        lines += ['', f"budget of fixed S={S}: {b['budget']} keyframes",
                  f"{'schedule':<22}{'keyframes':>10}{'mIoU':>8}{'drop':>7}  notes"]
        for name, r in b['rows'].items():
            note = ''
            if 'pixel_accuracy' in r:
                note = f"pixel accuracy {100 * r['pixel_accuracy']:.2f} (per-frame {100 * res['per_frame']['pixel_accuracy']:.2f})"
            if name == 'oracle':
                note += '; uses the labels (upper bound): ' + ' '.join(f'{s}:{len(v)}' for s, v in r['schedule'].items())
            elif name == 'oracle_counts':
                note = 'uses the labels: ' + ' '.join(f'{s}:{v}' for s, v in r['counts'].items())
            elif 'threshold' in r:
                note = f"threshold {r['threshold']:.4g}"
            lines.append(f"{name:<22}{r['keyframes']:>10}{100 * r['miou']:>8.2f}{100 * r['drop']:>7.2f}  {note}")
    lines += ['', 'fixed intervals: ' + ', '.join(f"S={S} {100 * r['drop']:.2f} ({r['keyframes']} kf)"
                                                   for S, r in res['fixed'].items())]
    if res.get('thin_oracle'):
        lines += ['', 'where the loss sits: fixed S with the network\'s own thin-object labels of each frame pasted in '
                  'boxes around the warped thin objects (an upper bound, uses the network on every frame)',
                  f"{'S':<4}{'mIoU':>8}{'drop':>7}{'plain drop':>12}{'share won':>11}{'box area':>10}"]
        for S, r in res['thin_oracle'].items():
            share = (r['fixed_drop'] - r['drop']) / r['fixed_drop'] if r['fixed_drop'] > 0 else float('nan')
            lines.append(f"{S:<4}{100 * r['miou']:>8.2f}{100 * r['drop']:>7.2f}{100 * r['fixed_drop']:>12.2f}"
                         f"{100 * share:>10.0f}%{100 * r['box_area']:>9.1f}%")
    return '\n'.join(lines)


def plot(res: dict, path) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .io import save_figure
    fig, ax = plt.subplots(figsize=(8.5, 5))
    fx = sorted(res['fixed'].values(), key=lambda r: r['keyframes'])
    ax.plot([r['keyframes'] for r in fx], [100 * r['drop'] for r in fx], 'k-o', lw=2, label='fixed interval S', zorder=4)
    for S, r in res['fixed'].items():
        ax.annotate(f'S={S}', (r['keyframes'], 100 * r['drop']), fontsize=7, xytext=(3, 3), textcoords='offset points')
    cmap = plt.get_cmap('tab10')
    for i, (sg, c) in enumerate(res['curves'].items()):
        pts = sorted({(p['keyframes'], p['drop']) for p in c})
        best = {}
        for n, d in pts:   # best drop at each keyframe count
            best[n] = min(d, best.get(n, d))
        xs = sorted(best)
        ax.plot(xs, [100 * best[x] for x in xs], '-', color=cmap(i % 10), lw=1, alpha=0.8, label=f'trigger: {sg}')
    for S, b in res['budgets'].items():
        r = b['rows']['oracle']
        ax.scatter([r['keyframes']], [100 * r['drop']], marker='*', s=150, color='tab:red', zorder=5,
                   label='oracle placement (uses labels)' if S == next(iter(res['budgets'])) else None)
    ax.axhline(4.0, color='tab:green', ls='--', lw=1, label='issue 2 goal: drop <= 4 at S=5')
    ax.set_xlabel('keyframes (of %d frames)' % res['config']['frames'])
    ax.set_ylabel('mIoU drop vs per-frame (points)')
    ax.set_title('Plain warping: how many keyframes, and where', fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper right')
    return save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg bench-schedules', description=__doc__.splitlines()[0])
    p.add_argument('--model', default='espnetv2_s2.0', help='keyframe network (default espnetv2_s2.0, as vidseg bench)')
    p.add_argument('--data', default=None, help='cityscapes_seq folder (default ../shared/data/cityscapes_seq)')
    p.add_argument('--seqs', nargs='+', default=None, help='snippet folders (default: every folder with pseudo_labels/)')
    p.add_argument('--frames', type=int, default=30, help='frames per snippet (default 30)')
    p.add_argument('--scale', type=int, default=2, help='working-resolution downscale D (default 2)')
    p.add_argument('--flow-preset', default='ultrafast', choices=('ultrafast', 'fast', 'medium'))
    p.add_argument('--intervals', type=int, nargs='+', default=[5, 10],
                   help='keyframe budgets, as the fixed intervals whose keyframe count they match (default 5 10)')
    p.add_argument('--signals', nargs='+', default=list(SIGNALS), choices=SIGNALS)
    p.add_argument('--lag', type=int, default=1, choices=(0, 1),
                   help='1: a trigger decides at frame t from evidence up to t-1 (default); 0: up to t')
    p.add_argument('--backend', default='auto')
    p.add_argument('--out', default='runs/schedules', help='output folder (schedules.json, .txt, .png)')
    p.add_argument('-q', '--quiet', action='store_true')
    a = p.parse_args(argv)
    try:
        from .flow import FlowEstimator
        from .models import load_model
        from .bench import resolve_snippets
        if a.frames < 2:
            raise ConfigError(f'--frames must be >= 2, got {a.frames}')
        if any(S < 1 for S in a.intervals):
            raise ConfigError(f'--intervals must be >= 1, got {a.intervals}')
        root, seqs = resolve_snippets(a.data, a.seqs)
        net = load_model(a.model, backend=a.backend)
        study = pair_study(net, root, seqs, a.frames, a.scale, FlowEstimator('dis', preset=a.flow_preset),
                           progress=not a.quiet)
        res = run(study, a.intervals, signals=a.signals, lag=a.lag, progress=not a.quiet)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    res['config'].update(model=net.name, scale=a.scale, flow_preset=a.flow_preset)
    table = format_table(res)
    print(table)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'schedules.json').write_text(json.dumps(res, indent=1) + '\n')
    (out / 'schedules.txt').write_text(table + '\n')
    png = plot(res, out / 'schedules.png')
    print(f'wrote {out / "schedules.json"}, schedules.txt and {png.name}')
    return 0
