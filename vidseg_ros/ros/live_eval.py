"""live_eval: the live ROS graph's labels scored against labels, next to the offline core on the same frames.

``python -m vidseg_ros.ros.live_eval [--temporal-mode M] [--two-sided] [--rate 17] --out r.json``

graph_bench measures how fast the graph is and whether it keeps up, on video without labels. This
measures what a subscriber of ``/semantic/labels`` actually gets: the Cityscapes sequence snippets
(``../shared/data/cityscapes_seq``, 4 x 30 frames at 17 Hz, resized to ``--size``) are published at
``--rate`` like a camera, one snippet after another with a ``--gap`` pause between them (the flow and
keyframe nodes' ``max_gap`` restarts the flow chain and forces a keyframe, as a camera dropout would), and
every label image received is scored against the snippets' pseudo labels (full resolution, the
predictions upsampled nearest; mIoU over the 19 Cityscapes classes, as ``vidseg bench``).

A frame whose label never arrives is scored as a label image with every pixel wrong (it is not left out:
a robot that got nothing got nothing). The same frames also go through the offline core in this process
(``VideoSegmenter`` with the same model, schedule, working scale and temporal module, reset per snippet;
two-sided through ``TwoSidedSegmenter``) and, for the baseline, the keyframe network on every frame. So
one run gives, on the same frames:

* ``per-frame``: the network on every frame (offline);
* ``offline``: the deterministic pipeline, the module on every propagated frame;
* ``live``: the graph at camera rate on this machine, with whatever it sheds (``refine_max_lag``),
  skips (a keyframe network busy when the schedule asks for one) or drops;
* with ``--two-sided``: ``offline two-sided`` and ``live two-sided`` (``/semantic/labels_two_sided``).

Per row: mIoU, its drop against per-frame, frames labelled / missing / degraded, keyframes, module passes,
and for live rows the latency (stamp -> label received). Per-class IoU and per-snippet figures are in the
JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vidseg_ros.core.errors import ConfigError, VidsegError
from vidseg_ros.ros import graph_bench as gb

NUM_CLASSES = 19   # Cityscapes train ids; the networks' background output (19) counts as wrong


# ---------------------------------------------------------------------------------------------- data
def load_snippets(size, seqs=None, frames: int = 30, data=None):
    """[(name, [rgb resized to size], [train-id labels at full resolution])] of the sequence snippets."""
    import cv2
    from vidseg_ros.core.bench import _load_seq, resolve_snippets
    root, names = resolve_snippets(data, seqs)
    out = []
    for s in names:
        _, imgs, gts = _load_seq(root / s, frames)
        out.append((s, [np.ascontiguousarray(cv2.resize(f, tuple(size), interpolation=cv2.INTER_AREA))
                        for f in imgs], gts))
    return out


# ---------------------------------------------------------------------------------------------- scoring
class Scorer:
    """Confusion matrices of one row: over all frames, over the steady frames (index >= ``steady_from``
    in their snippet: after a snippet's start, whose first labels a live graph can only hold from the
    previous scene until the first keyframe result is in) and per snippet. A missing prediction counts
    as every pixel wrong."""

    def __init__(self, class_names, steady_from: int = 0):
        from vidseg_ros.core.metrics import ConfusionMatrix
        self._cm = ConfusionMatrix
        self.names = list(class_names)[:NUM_CLASSES]
        self.steady_from = int(steady_from)
        self.steady = ConfusionMatrix(NUM_CLASSES)
        self.per_seq = {}
        self.frames = self.missing = 0

    def add(self, seq: str, index: int, pred, gt):
        import cv2
        if pred is None:
            pred = np.full(gt.shape, 255, np.uint8)
            self.missing += 1
        elif pred.shape != gt.shape:
            pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
        self.frames += 1
        if index >= self.steady_from:
            self.steady.update(pred, gt)
        self.per_seq.setdefault(seq, self._cm(NUM_CLASSES)).update(pred, gt)

    def summary(self) -> dict:
        overall = self._cm(NUM_CLASSES)
        for cm in self.per_seq.values():
            overall.merge(cm)
        s = overall.summary(self.names)
        s.update(frames=self.frames, missing=self.missing, steady_from=self.steady_from,
                 miou_steady=self.steady.miou(), iou_steady=self.steady.summary(self.names)['iou'],
                 per_snippet={k: v.miou() for k, v in self.per_seq.items()})
        return s


# ---------------------------------------------------------------------------------------------- offline
def make_core(model, schedule: str, scale: int, temporal_mode: str = '', two_sided: bool = False):
    """(VideoSegmenter, runner) as ``vidseg run`` builds them; runner is the TwoSidedSegmenter or None."""
    from vidseg_ros.core import temporal
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    from vidseg_ros.ros import graph
    seg = VideoSegmenter(model, OperatingPoint('live_eval', scale, 1, True, False),
                         schedule=graph.parse_schedule(schedule))
    runner = None
    if two_sided:
        from vidseg_ros.core.bidirectional import TwoSidedSegmenter
        runner = TwoSidedSegmenter(seg)
    temporal.attach_mode(seg, temporal_mode, model)
    return seg, runner


def run_offline(snippets, model, schedule, scale, temporal_mode='', two_sided=False, progress=True,
                steady_from: int = 0) -> dict:
    """Per-frame, offline pipeline (and offline two-sided) rows on the snippets."""
    from tqdm import tqdm
    names = model.class_set.names
    rows = {'per-frame': Scorer(names, steady_from), 'offline': Scorer(names, steady_from)}
    if two_sided:
        rows['offline two-sided'] = Scorer(names, steady_from)
    seg, runner = make_core(model, schedule, scale, temporal_mode, two_sided)
    base, _ = make_core(model, 'fixed:1', scale)   # the network on every frame, through the same pipeline
    kf = refined = 0
    total = sum(len(f) for _, f, _ in snippets)
    bar = tqdm(total=total, desc='offline', disable=not progress, leave=False)
    for name, frames, gts in snippets:
        seg.reset()
        base.reset()
        two = []
        for i, (f, g) in enumerate(zip(frames, gts)):
            rows['per-frame'].add(name, i, base.process(f).labels, g)
            if runner is not None:
                two += [o.labels.copy() for o in runner.process(f)]
                out = runner.last_forward
            else:
                out = seg.process(f)
            rows['offline'].add(name, i, out.labels, g)
            kf += int(out.distance == 0)
            bar.update()
        if runner is not None:
            two += [o.labels.copy() for o in runner.flush()]
            for i, (p, g) in enumerate(zip(two, gts)):
                rows['offline two-sided'].add(name, i, p, g)
        refined += int(seg.propagator.stats.get('refined_frames', 0))
    bar.close()
    out = {k: v.summary() for k, v in rows.items()}
    out['offline'].update(keyframes=kf, refined_frames=refined)
    return out


# ---------------------------------------------------------------------------------------------- live
class LabelRecorder(gb.Recorder):
    """graph_bench's probe that also keeps every label image (causal and delayed topic) by stamp."""

    def __init__(self):
        super().__init__('vidseg_live_eval')
        self.arrays = {}
        self.arrays_two_sided = {}

    def _keep(self, store: dict, msg):
        from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
        arr = image_to_ndarray(msg).copy()
        with self.cv:
            store.setdefault(stamp_to_ns(msg.header.stamp), arr)

    def _on_labels(self, msg):
        self._keep(self.arrays, msg)
        super()._on_labels(msg)

    def _on_two_sided(self, msg):
        self._keep(self.arrays_two_sided, msg)
        super()._on_two_sided(msg)


def graph_argv(args) -> list:
    """vidseg_graph options: the model, schedule, scale, mode, and max_gap so that each snippet (after a
    ``--gap`` pause) restarts the flow chain and starts with a keyframe."""
    argv = ['--model', args.model, '--schedule', args.schedule, '--stop-timeout', '10']
    if args.temporal_mode:
        argv += ['--temporal-mode', args.temporal_mode]
    if args.two_sided:
        argv += ['--two-sided']
    params = [f'{n}:scale={args.scale}' for n in gb.NODES]
    params += [f'{n}:max_gap={args.gap / 2:g}' for n in ('flow_node', 'keyframe_node')]
    params += list(args.param)
    for p in params:
        argv += ['--param', p]
    return argv


def run_live(args, snippets, progress=True) -> dict:
    """Start the graph, publish the snippets at the camera rate, score what arrives."""
    argv = graph_argv(args)
    result = {'ros_domain_id': gb.isolate_domain(args.domain, 'shm'), 'graph_argv': argv}
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix='vidseg_live_eval_'))
    result['log_dir'] = str(log_dir)
    procs = gb.GraphProcesses(argv, log_dir)
    rec = None
    sent_by_seq = []
    try:
        procs.start()
        rec = LabelRecorder()
        result['startup_s'] = gb.bring_up(rec, procs, snippets[0][1], args.warmup, args.startup_timeout)
        d0 = rec.diag_snapshot()
        for name, frames, _ in snippets:
            time.sleep(args.gap)   # > max_gap: the next frame restarts the flow chain and is a keyframe
            sent = gb.run_paced(rec, frames, args.rate, len(frames), settle=args.settle, progress=progress)
            sent_by_seq.append((name, sent))
        time.sleep(1.5)   # a fresh /diagnostics message
        all_sent = [x for _, s in sent_by_seq for x in s]
        result['summary'] = gb.summarize(rec, all_sent, d0, rec.diag_snapshot())
        result['summary'].pop('latency_series_ms', None)
        dead = procs.dead()
        if dead:
            result['dead_processes'] = dead
    finally:
        if rec is not None:
            rec.close()
        procs.stop()
        gb.release_profile(os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', ''))
    from vidseg_ros.core.classes import get_class_set
    names = get_class_set('cityscapes').names
    rows = {'live': Scorer(names, args.steady_from)}
    if args.two_sided:
        rows['live two-sided'] = Scorer(names, args.steady_from)
    gts = {name: g for name, _, g in snippets}
    per_frame = []
    for name, sent in sent_by_seq:
        for i, ((ns, _), g) in enumerate(zip(sent, gts[name])):
            rows['live'].add(name, i, rec.arrays.get(ns), g)
            st = rec.stats.get(ns, {})
            per_frame.append({'snippet': name, 'index': i, 'labelled': ns in rec.arrays,
                              'distance': st.get('distance'), 'degraded': st.get('degraded'),
                              'reasons': st.get('reasons'),
                              'latency_ms': (rec.labels[ns] - ns) * 1e-6 if ns in rec.labels else None})
            if args.two_sided:
                rows['live two-sided'].add(name, i, rec.arrays_two_sided.get(ns), g)
    result['rows'] = {k: v.summary() for k, v in rows.items()}
    result['per_frame'] = per_frame
    return result


# ---------------------------------------------------------------------------------------------- report
def format_table(r: dict) -> str:
    pf = r['rows'].get('per-frame', {})   # none with --skip-offline: no drops
    base, base_st = pf.get('miou'), pf.get('miou_steady')
    live = r.get('live', {}).get('summary', {})
    diag = live.get('diagnostics', {}).get('propagation_node', {})
    cols = ('row', 'mIoU', 'drop', 'steady mIoU', 'steady drop', 'frames', 'missing', 'degraded', 'keyframes', 'module passes', 'latency med ms')
    lines = []
    for k, v in r['rows'].items():
        is_live = k.startswith('live')
        if k == 'per-frame':
            extra = ('-', v['frames'], '-', '-')
        elif k == 'offline':
            extra = ('-', v.get('keyframes', '-'), v.get('refined_frames', '-'), '-')
        elif k == 'live':
            extra = (live.get('degraded', '-'), live.get('keyframes', '-'),
                     int(diag['propagator_refined_frames']) if 'propagator_refined_frames' in diag else '-',
                     f"{live['latency_median_ms']:.0f}" if 'latency_median_ms' in live else '-')
        elif is_live:
            t = live.get('two_sided', {})
            extra = ('-', '-', '-', f"{t['latency_median_ms']:.0f}" if 'latency_median_ms' in t else '-')
        else:
            extra = ('-', '-', '-', '-')
        drop = '-' if base is None else f"{100 * (base - v['miou']):.1f}"
        drop_st = '-' if base_st is None else f"{100 * (base_st - v['miou_steady']):.1f}"
        lines.append((k, f"{100 * v['miou']:.1f}", drop, f"{100 * v['miou_steady']:.1f}", drop_st, v['frames'],
                      v['missing'])
                     + extra)
    head = (f"live_eval: {r['source']} @ {r['rate_hz']:g} Hz; model {r['model']}, schedule {r['schedule']}, "
            f"D={r['scale']}, mode {r['temporal_mode'] or 'warp'}{' + two-sided' if r['two_sided'] else ''}")
    out = [head] + gb.aligned(cols, lines)
    out.append(f"(steady: each snippet's frames from index {pf.get('steady_from', r.get('steady_from'))} on; "
               f"missing frames count as all pixels wrong)")
    if r.get('live', {}).get('per_frame'):
        d = [f['distance'] for f in r['live']['per_frame'] if f['distance'] is not None]
        if d:
            out.append(f"live distance from the keyframe its labels come from: mean {np.mean(d):.2f}, "
                       f"max {max(d)} (offline: at most the schedule's interval - 1)")
    if diag:
        out.append('live propagation node: ' + ', '.join(
            f'{k} {int(v)}' for k, v in diag.items() if k in ('frames_in', 'frames_out', 'drops', 'dropped_overflow',
                                                               'propagator_refine_skipped',
                                                               'propagator_catch_up_refine_skipped',
                                                               'keyframes_late', 'flow_timeouts')))
    return '\n'.join(out)


def _config_label(r: dict) -> str:
    """'region-ctx, keyframe_wait=0.3' for a result: its mode, two-sided and the --param overrides."""
    parts = [r.get('temporal_mode') or 'warp'] + (['two-sided'] if r.get('two_sided') else [])
    argv = r.get('live', {}).get('graph_argv', [])
    own = {f'{n}:max_gap' for n in ('flow_node', 'keyframe_node')} | {f'{n}:scale' for n in gb.NODES}
    for i, a in enumerate(argv):
        if a == '--param' and argv[i + 1].split('=')[0] not in own:
            parts.append(argv[i + 1].split(':', 1)[1])
    return ', '.join(parts)


def combine(results: list) -> dict:
    """One row per live run (and its offline row) of several result JSONs: the accuracy/latency table."""
    rows = []
    for r in results:
        live = r.get('live', {}).get('summary', {})
        if 'live' not in r.get('rows', {}):
            raise ConfigError(f"{r.get('_path', 'a result')}: no live row (run without --skip-live)")
        pf = r['rows'].get('per-frame', {})
        diag = live.get('diagnostics', {}).get('propagation_node', {})
        d = [f['distance'] for f in r['live'].get('per_frame', []) if f['distance'] is not None]
        for key in [k for k in r['rows'] if k.startswith('live')]:
            v = r['rows'][key]
            lat = live if key == 'live' else live.get('two_sided', {})
            rows.append({'file': r.get('_path', ''), 'config': _config_label(r) + (' (delayed topic)' if key != 'live' else ''),
                         'miou': v['miou'], 'miou_steady': v['miou_steady'],
                         'offline_miou': r['rows'].get('offline two-sided' if key != 'live' else 'offline', {}).get('miou'),
                         'per_frame_miou': pf.get('miou'),
                         'latency_median_ms': lat.get('latency_median_ms'), 'latency_p99_ms': lat.get('latency_p99_ms'),
                         'missing': v['missing'], 'degraded': live.get('degraded') if key == 'live' else None,
                         'module_passes': diag.get('propagator_refined_frames') if key == 'live' else None,
                         'mean_distance': float(np.mean(d)) if d and key == 'live' else None})
    return {'rows': rows}


def format_combined(c: dict) -> str:
    def f(v, fmt='{:.1f}', scale=1.0):
        return '-' if v is None else fmt.format(v * scale)
    cols = ('configuration', 'live mIoU', 'offline', 'per-frame', 'live steady', 'lat med ms', 'lat p99 ms',
            'mean dist', 'degraded', 'missing', 'module passes')
    lines = [(r['config'], f(r['miou'], scale=100), f(r['offline_miou'], scale=100), f(r['per_frame_miou'], scale=100),
              f(r['miou_steady'], scale=100), f(r['latency_median_ms'], '{:.0f}'), f(r['latency_p99_ms'], '{:.0f}'),
              f(r['mean_distance'], '{:.2f}'), f(r['degraded'], '{:.0f}'), r['missing'], f(r['module_passes'], '{:.0f}'))
             for r in c['rows']]
    return '\n'.join(gb.aligned(cols, lines))


def plot_combined(c: dict, path) -> Path:
    """Live mIoU against median latency, one point per configuration; offline accuracy as a tick."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from vidseg_ros.core.io import save_figure
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap('tab20').colors
    for i, r in enumerate(c['rows']):
        if r['latency_median_ms'] is None:
            continue
        x, y = r['latency_median_ms'], 100 * r['miou']
        marker = 'D' if 'delayed' in r['config'] else 'o'
        ax.scatter([x], [y], marker=marker, s=40, zorder=3, label=r['config'], color=colours[i % len(colours)])
        if r['offline_miou'] is not None:
            ax.plot([x, x], [y, 100 * r['offline_miou']], ':', color='grey', lw=1)
            ax.scatter([x], [100 * r['offline_miou']], marker='_', s=120, color='grey')
    pf = [r['per_frame_miou'] for r in c['rows'] if r['per_frame_miou'] is not None]
    if pf:
        ax.axhline(100 * pf[0], color='k', lw=0.8, ls='--', label='per-frame network (offline)')
    ax.set_xlim(left=0)
    ax.set_xlabel('median latency, camera stamp -> label received (ms)')
    ax.set_ylabel('mIoU vs pseudo labels (%)')
    ax.set_title('live graph at camera rate (points) vs the offline pipeline (grey ticks)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='python -m vidseg_ros.ros.live_eval',
                                 description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='default', help="keyframe model (default: the packaged 'default')")
    ap.add_argument('--schedule', default='fixed:5')
    ap.add_argument('--scale', type=int, default=1, help='working-resolution downscale D of the --size frames')
    ap.add_argument('--size', default='1024x512', help='camera image size the snippets are resized to')
    ap.add_argument('--temporal-mode', default='', help='propagation mode (graph --temporal-mode; default warp)')
    ap.add_argument('--two-sided', action='store_true', help='also score the delayed two-sided topic')
    ap.add_argument('--rate', type=float, default=17.0, help='camera rate Hz (the snippets are 17 Hz)')
    ap.add_argument('--gap', type=float, default=1.5, help='pause between snippets, s (max_gap = gap / 2)')
    ap.add_argument('--seqs', nargs='*', default=None, help='snippet folders (default: all four)')
    ap.add_argument('--frames', type=int, default=30, help='frames per snippet')
    ap.add_argument('--param', action='append', default=[], metavar='NODE:NAME=VALUE',
                    help='extra vidseg_graph parameter (repeatable)')
    ap.add_argument('--skip-offline', action='store_true', help='live rows only (no per-frame baseline)')
    ap.add_argument('--skip-live', action='store_true', help='offline rows only (no ROS)')
    ap.add_argument('--steady-from', type=int, default=5,
                    help="the 'steady' columns score each snippet's frames from this index on (default 5: one "
                         "keyframe interval at fixed:5)")
    ap.add_argument('--warmup', type=int, default=5, help='unscored frames first')
    ap.add_argument('--settle', type=float, default=3.0, help='s without new labels that end a snippet')
    ap.add_argument('--startup-timeout', type=float, default=120.0)
    ap.add_argument('--domain', type=int, default=None)
    ap.add_argument('--log-dir', default='')
    ap.add_argument('--data', default=None, help='cityscapes_seq folder (default: ../shared)')
    ap.add_argument('--out', default='', help='write the result JSON here')
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--combine', nargs='+', default=None, metavar='JSON',
                    help='no run: one table (and with --plot a figure) of the live rows of these result files')
    ap.add_argument('--plot', default='', help='with --combine: write the accuracy/latency figure here (PNG)')
    return ap


def run_combine(args) -> int:
    results = []
    for p in args.combine:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f'cannot read result {p}: {e}') from None
        r['_path'] = p
        results.append(r)
    c = combine(results)
    table = format_combined(c)
    if args.plot:
        table += f'\nwrote {plot_combined(c, args.plot)}'
    return gb.report(table, c, args.out)


def resolve_args(args):
    from vidseg_ros.core.schedule import make_schedule
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.keyframe_node import parse_size
    args.size = parse_size(args.size)
    if args.rate <= 0 or args.gap <= 0 or args.frames < 2 or args.scale < 1:
        raise ConfigError('--rate and --gap must be > 0, --frames >= 2, --scale >= 1')
    if 1.0 / args.rate >= args.gap / 2:
        raise ConfigError(f'--gap {args.gap:g} s: max_gap (gap / 2) must exceed the frame period 1/{args.rate:g} s')
    if args.temporal_mode and args.temporal_mode not in graph.NODE_TEMPORAL_MODES:
        raise ConfigError(f'unknown --temporal-mode {args.temporal_mode!r} '
                          f'(known: {", ".join(graph.NODE_TEMPORAL_MODES)})')
    if args.two_sided:
        from vidseg_ros.core.temporal import TWO_SIDED_MODES
        if args.temporal_mode not in ('',) + TWO_SIDED_MODES:
            raise ConfigError(f'--two-sided combines with --temporal-mode {" / ".join(TWO_SIDED_MODES)} only')
    if args.skip_offline and args.skip_live:
        raise ConfigError('--skip-offline and --skip-live leave nothing to do')
    make_schedule(graph.parse_schedule(args.schedule))
    return args


def run(args) -> dict:
    from vidseg_ros.core.models import load_model
    progress = not args.quiet
    snippets = load_snippets(args.size, args.seqs, args.frames, args.data)
    n = sum(len(f) for _, f, _ in snippets)
    result = {'source': f'cityscapes_seq {len(snippets)} x {args.frames} frames -> {args.size[0]}x{args.size[1]}',
              'snippets': [s for s, _, _ in snippets], 'frames': n, 'rate_hz': args.rate, 'gap_s': args.gap,
              'model': args.model, 'schedule': args.schedule, 'scale': args.scale,
              'temporal_mode': args.temporal_mode, 'two_sided': args.two_sided, 'steady_from': args.steady_from,
              'rows': {}}
    if not args.skip_offline:
        model = load_model(args.model)
        if model.class_set.name != 'cityscapes':   # the pseudo labels are Cityscapes train ids
            raise ConfigError(f'model {args.model!r} predicts the {model.class_set.name} classes; live_eval scores '
                              'against Cityscapes pseudo labels and needs a Cityscapes model')
        result['rows'].update(run_offline(snippets, model, args.schedule, args.scale, args.temporal_mode,
                                          args.two_sided, progress, args.steady_from))
        del model
    if not args.skip_live:
        live = run_live(args, snippets, progress)
        result['rows'].update(live.pop('rows'))
        result['live'] = live
    return result


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.combine:
            return run_combine(args)
        args = resolve_args(args)
        result = run(args)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return gb.report(format_table(result), result, args.out)


if __name__ == '__main__':
    sys.exit(main())
