"""How far apart can frames be? Propagation accuracy and the IAM inconsistent fraction against frame spacing.

``python -m vidseg_ros.core.spacing_bench --out docs/results/frame_spacing.json`` (BENCHMARKS.md section 4,
"Frames far apart"). The four ``cityscapes_seq`` snippets (17 Hz) are taken every 1st, 2nd, 3rd and 5th
frame (17, 8.5, 5.7 and 3.4 Hz); each is segmented per frame and at S=5 by ``VideoSegmenter`` (the same
code as ``vidseg run``) and scored against the pseudo labels. The median IAM inconsistent fraction of the
propagated frames, the figure ``vidseg run`` checks (``pipeline.far_apart_warning``), is reported for
each, and for other inputs at hand without labels: the Udacity clips (25 Hz), the synthetic drive of
``vidseg synth`` / the demo (10 Hz, and 30 Hz) and the CamVid image sets (one frame a second of their drives).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ['run_spacing_bench', 'main']


def _segment(model, frames, interval):
    """Labels of ``frames`` (RGB) at S=interval, and the segmenter (its inconsistent fractions)."""
    from .pipeline import VideoSegmenter, scale_for_network
    from .schedule import OperatingPoint
    seg = None
    labels = []
    for rgb in frames:
        if seg is None:
            scale = scale_for_network((rgb.shape[1], rgb.shape[0]), model.input_size)
            seg = VideoSegmenter(model, OperatingPoint(f's{interval}', scale=scale, interval=interval))
        labels.append(seg.process(rgb).labels)
    return labels, seg


def default_extra() -> list:
    """The unlabelled inputs: (name, source, max frames, frame rate Hz or None); a source is a path or a
    callable giving frames."""
    from .paths import shared_dir
    d = shared_dir() / 'data'

    def synth(fps):
        def frames(n):
            from .synth import SyntheticDrive
            drive = SyntheticDrive(seed=0, size=(640, 360), fps=fps, duration_s=max(60.0, n / fps))
            return [drive.render(t)[0] for t in range(n)]
        return frames

    return [('udacity/solidWhiteRight.mp4 (25 Hz)', d / 'udacity' / 'solidWhiteRight.mp4', 221, 25.0),
            ('udacity/test_video.mp4 (25 Hz)', d / 'udacity' / 'test_video.mp4', 38, 25.0),
            ('synthetic drive, the demo input (10 Hz)', synth(10.0), 60, 10.0),
            ('synthetic drive at 30 Hz', synth(30.0), 60, 30.0),
            ('camvid/test (1 Hz)', d / 'camvid' / 'test', 233, 1.0),
            ('camvid/train (1 Hz)', d / 'camvid' / 'train', 367, 1.0)]


def _frames_of(source, n):
    """Up to ``n`` RGB frames of a path (video, folder) or a callable(n); None for a path that is not there."""
    if callable(source):
        return source(n)
    if not Path(source).exists():
        return None
    from .io import open_source
    frames = []
    for fr in open_source(str(source)):
        if len(frames) >= n:
            break
        if fr.error is None:
            frames.append(fr.rgb)
    return frames


def run_spacing_bench(model='default', data=None, steps=(1, 2, 3, 5), interval=5, extra=None,
                      progress=True) -> dict:
    """The table (see module docstring) as a dict; ``extra``: [(name, source, max frames, Hz)] (``default_extra``)."""
    from tqdm import tqdm

    from .bench import _load_seq, resolve_snippets
    from .classes import get_class_set
    from .metrics import ConfusionMatrix
    from .models import load_model

    m = load_model(model) if isinstance(model, str) else model
    ncls = len(get_class_set('cityscapes').names)
    root, seqs = resolve_snippets(data, None)
    snippets = [_load_seq(root / s, 30) for s in seqs]
    rows = []
    bar = tqdm(total=len(steps) * len(snippets) * 2, desc='spacing', unit='snippet', disable=not progress)
    for step in steps:
        cms = {1: ConfusionMatrix(ncls), interval: ConfusionMatrix(ncls)}
        fracs = []
        for _, frames, gts in snippets:
            fr, gt = frames[::step], gts[::step]
            for s, cm in cms.items():
                labels, seg = _segment(m, fr, s)
                for lab, g in zip(labels, gt):
                    cm.update(lab, g)
                if s == interval:
                    fracs += seg.inconsistent_fractions
                bar.update()
        per_frame, prop = cms[1].miou(), cms[interval].miou()
        rows.append({'source': 'cityscapes_seq', 'step': step, 'rate_hz': round(17.0 / step, 1),
                     'frames': sum(len(f[1][::step]) for f in snippets), 'miou_per_frame': per_frame,
                     f'miou_s{interval}': prop, 'drop': per_frame - prop,
                     'median_inconsistent_fraction': float(np.median(fracs)), 'propagated_frames': len(fracs)})
    bar.close()
    if extra is None:
        extra = default_extra()
    for name, source, n, rate in tqdm(extra, desc='unlabelled', unit='source', disable=not progress):
        frames = _frames_of(source, n)
        if frames is None:
            continue
        _, seg = _segment(m, frames, interval)
        f = seg.inconsistent_fractions
        rows.append({'source': name, 'rate_hz': rate, 'frames': len(frames), 'propagated_frames': len(f),
                     'median_inconsistent_fraction': float(np.median(f)) if f else None})
    return {'model': m.name, 'interval': interval, 'rows': rows}


def format_table(res: dict) -> str:
    s = res['interval']
    lines = [f'| source | frames | per-frame mIoU | S={s} mIoU | drop | median IAM fraction |',
             '|---|---|---|---|---|---|']
    for r in res['rows']:
        name = r['source'] + (f' every {r["step"]} ({r["rate_hz"]} Hz)' if 'step' in r else '')
        if 'drop' in r:
            acc = (f'{100 * r["miou_per_frame"]:.1f} | {100 * r[f"miou_s{s}"]:.1f} | {100 * r["drop"]:.1f}')
        else:
            acc = '- | - | -'
        frac = r['median_inconsistent_fraction']
        lines.append(f'| {name} | {r["frames"]} | {acc} | {"-" if frac is None else f"{frac:.3f}"} |')
    return '\n'.join(lines)


def plot(res: dict, path) -> Path:
    """Drop at S and the median IAM fraction against the frame rate, the warning threshold, and the
    unlabelled inputs as markers on the fraction axis."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    from .io import save_figure
    from .pipeline import FAR_APART_FRACTION
    s = res['interval']
    lab = [r for r in res['rows'] if 'step' in r]
    other = [r for r in res['rows'] if 'step' not in r and r['median_inconsistent_fraction'] is not None]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    rates = [r['rate_hz'] for r in lab]
    a1.plot(rates, [100 * r['drop'] for r in lab], 'o-')
    a1.set_ylabel(f'mIoU drop at S={s} vs per frame (points)')
    a1.set_title('cityscapes_seq every Nth frame: propagation loss')
    a2.plot(rates, [r['median_inconsistent_fraction'] for r in lab], 'o-', label='cityscapes_seq every Nth frame')
    markers = 'sD^v<>ph'
    for i, r in enumerate(o for o in other if o.get('rate_hz')):
        a2.plot([r['rate_hz']], [r['median_inconsistent_fraction']], markers[i % len(markers)], color=f'C{i + 1}',
                ms=8, label=r['source'])
    a2.axhline(FAR_APART_FRACTION, color='red', lw=2, label=f'warning threshold {FAR_APART_FRACTION}')
    a2.set_ylabel('median IAM inconsistent fraction')
    a2.set_ylim(0, max(0.5, 1.35 * max(r['median_inconsistent_fraction'] for r in lab + other)))
    a2.set_title('what vidseg run / the propagation node check')
    a2.legend(fontsize=7, loc='upper right')
    ticks = [1, 2, 3, 5, 10, 17, 25, 30]
    for a in (a1, a2):
        a.set_xscale('log')
        a.set_xlim(0.8, 40)
        a.xaxis.set_major_locator(FixedLocator(ticks))
        a.xaxis.set_minor_locator(NullLocator())
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.set_xlabel('frame rate (Hz)')
        a.grid(alpha=0.3)
    return save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m vidseg_ros.core.spacing_bench', description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='default')
    ap.add_argument('--data', default=None, help='cityscapes_seq folder (default ../shared/data/cityscapes_seq)')
    ap.add_argument('--steps', type=int, nargs='+', default=[1, 2, 3, 5])
    ap.add_argument('--out', default='frame_spacing.json', help='JSON; the plot goes beside it (.png)')
    ap.add_argument('--replot', action='store_true', help='redraw the plot from an existing --out JSON')
    ap.add_argument('-q', '--quiet', action='store_true')
    args = ap.parse_args(argv)
    from .errors import VidsegError
    if args.replot:
        res = json.loads(Path(args.out).read_text())
        print(format_table(res))
        print(f'wrote {plot(res, Path(args.out).with_suffix(".png"))}')
        return 0
    try:
        res = run_spacing_bench(args.model, args.data, tuple(args.steps), progress=not args.quiet)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_table(res))
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=1))
    png = plot(res, out.with_suffix('.png'))
    print(f'wrote {out}, {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
