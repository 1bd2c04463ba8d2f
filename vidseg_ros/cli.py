"""``vidseg``: offline keyframe video segmentation, evaluation and benchmarks.

    vidseg run SOURCE --out DIR [--model NAME|PATH] [--interval S] [--scale D] [--no-warp] [--refine] ...
    vidseg eval PRED_DIR GT_DIR --classes cityscapes|camvid [--gt-format ...] [--json OUT]
    vidseg bench [--model espnetv2_s2.0] [--seqs ...] [--frames N] [--out DIR]
    vidseg synth ...            (synthetic drive with exact labels and flow)
    vidseg bench-backends ...   (keyframe network backends: torch / TorchScript / onnxruntime)
    vidseg train distill ...    (distil the compact default model from the ESPNetv2 s2.0 teacher)
    vidseg train temporal ...   (train a learned temporal module: refiner / grfp / davss)
    vidseg eval-model ...       (a keyframe model against the teacher, pseudo and human labels, speed)
    vidseg bench-temporal ...   (EVS Table 1: per-class IoU of each temporal module)
    vidseg synth-analysis ...   (limits of flow propagation on the synthetic drive: GT flow vs DIS)
    vidseg flow-limits ...      (the same on the real snippets: pseudo / network labels carried along DIS)

Errors on bad input are printed as ``error: <message>`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.errors import ConfigError, InputError, VidsegError

DELEGATES = {'synth': ('vidseg_ros.core.synth', 'cli_main', 'generate a synthetic drive (see vidseg synth -h)'),
             'bench-backends': ('vidseg_ros.core.models.backend_bench', 'main',
                                'compare keyframe network backends (see vidseg bench-backends -h)'),
             'train': ('vidseg_ros.cli', 'train_main', 'train a model: vidseg train distill|temporal ...'),
             'eval-model': ('vidseg_ros.core.model_eval', 'main',
                            'evaluate a keyframe model against the teacher and labels'),
             'bench-temporal': ('vidseg_ros.core.temporal_bench', 'main',
                                'EVS Table 1 of the temporal modules (see vidseg bench-temporal -h)'),
             'bench-schedules': ('vidseg_ros.core.schedule_bench', 'main',
                                 'keyframe placement for plain warping: fixed, triggers, oracle (see -h)'),
             'profile-stages': ('vidseg_ros.core.caching', 'profile_main',
                                'ESPNetv2 cost per stage: what feature caching can save (see -h)'),
             'synth-analysis': ('vidseg_ros.core.synth_analysis', 'main',
                                'propagation with ground-truth flow vs DIS on the synthetic drive'),
             'flow-limits': ('vidseg_ros.core.synth_analysis', 'real_main',
                             'labels carried along DIS flow on the real snippets, against pseudo labels'),
             'shm-clean': ('vidseg_ros.ros.shm', 'main',
                           'remove /dev/shm files left by killed Fast DDS participants (see -h)')}

TRAINERS = {'distill': ('vidseg_ros.core.distill', 'cli_main'),
            'temporal': ('vidseg_ros.core.temporal_train', 'cli_main')}


def train_main(argv) -> int:
    """``vidseg train distill|temporal ...``"""
    import importlib
    if not argv or argv[0] not in TRAINERS:
        print(f'usage: vidseg train {{{"|".join(TRAINERS)}}} [-h] ...', file=sys.stderr)
        return 2
    mod, fn = TRAINERS[argv[0]]
    return int(getattr(importlib.import_module(mod), fn)(argv[1:]) or 0)


def positive_int(s):
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {s!r}') from None
    if v < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {s!r}')
    return v


def scale_arg(s):
    """argparse type: a working-resolution downscale D >= 1, or 'auto'."""
    if s == 'auto':
        return s
    return positive_int(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vidseg', description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', metavar='COMMAND')

    r = sub.add_parser('run', help='segment a video / image folder / rosbag')
    r.add_argument('source', help='video file, image folder, image, or rosbag2 (dir/.mcap/.db3)')
    r.add_argument('--out', required=True, help='output folder (labels/, overlay.mp4, summary.json)')
    r.add_argument('--model', default=None, help='registry name (e.g. espnetv2_s2.0) or model/config file '
                   '(default: packaged default model)')
    r.add_argument('--weights', default=None, help='weights file overriding the model spec')
    r.add_argument('--preset', default=None, help='named operating point (e.g. warp_s5, hold_s5, per_frame)')
    r.add_argument('--interval', type=positive_int, default=None, help='keyframe interval S (default 5)')
    r.add_argument('--scale', type=scale_arg, default='auto',
                   help="working-resolution downscale D (1, 2, 4, ...; 'auto': smallest D with the "
                        "working size <= the network input)")
    r.add_argument('--no-warp', action='store_true', help='hold labels between keyframes (W off)')
    r.add_argument('--refine', action='store_true', help='refine IAM-flagged regions (R on, low-res network)')
    r.add_argument('--temporal-mode', default=None,
                   choices=('warp', 'iam-lowres', 'refiner', 'grfp', 'davss', 'cache1', 'cache2', 'region',
                            'region-ctx'),
                   help='propagation mode (issue 4): plain warp, the low-res stand-in, the learned EVS '
                        'refiner / GRFP STGRU / DAVSS correction (packaged weights), keyframe '
                        'feature caching of 1 or 2 levels (ESPNetv2; cached maps warped with the state, as '
                        'in the ROS graph), or region refresh '
                        '(the keyframe network on the worst strip or tile of each propagated frame; '
                        'region-ctx: with the keyframe\'s global context, ESPNetv2)')
    r.add_argument('--two-sided', action='store_true',
                   help='delayed two-sided propagation: each propagated frame waits for the next keyframe, '
                        'whose labels are carried back with the forward flow and fused with the forward '
                        'ones (core/bidirectional.py; with plain warping or --temporal-mode region / region-ctx, '
                        'whose refreshed states it then fuses; adds up to S-1 frames of latency)')
    r.add_argument('--max-delay', type=positive_int, default=None,
                   help='--two-sided: the most frames a frame waits for the next keyframe (default: no '
                        'limit; frames that wait longer are written forward-only)')
    r.add_argument('--no-trust', action='store_true',
                   help='--two-sided: fuse without the flow chains\' forward-backward trust (cheaper by ~2 ms '
                        'a frame at 1024x512; BENCHMARKS.md section 4)')
    r.add_argument('--temporal-weights', default=None, help='weights of the learned temporal module')
    r.add_argument('--region-tile-area', type=float, default=None,
                   help='--temporal-mode region(-ctx): share of the frame refreshed per propagated frame '
                        '(default 0.19)')
    r.add_argument('--region-shape', choices=('strip', 'tile'), default=None,
                   help='--temporal-mode region(-ctx): shape of the refreshed region: a full-height strip (default) '
                        'or a 2:1 tile')
    r.add_argument('--schedule', default=None,
                   help="fixed | adaptive | budget, or a spec like 'adaptive:max_interval=10'")
    r.add_argument('--flow-preset', default='ultrafast', choices=('ultrafast', 'fast', 'medium'),
                   help='DIS preset for propagation flow (default ultrafast)')
    r.add_argument('--device', default='cpu', help='cpu or cuda')
    r.add_argument('--backend', default='auto', help='auto, torch, torchscript or onnxruntime')
    r.add_argument('--max-frames', type=positive_int, default=None, help='stop after N frames')
    r.add_argument('--strict', action='store_true',
                   help='stop at the first unreadable frame (default: skip it with a warning, go on, and list '
                        'it in summary.json: skipped_frames)')
    r.add_argument('--topic', default=None, help='image topic (rosbag sources)')
    r.add_argument('--fps', type=float, default=None, help='frame rate of an image folder (overlay video)')
    r.add_argument('--no-overlay', action='store_true', help='do not write overlay.mp4')
    r.add_argument('--color', action='store_true', help='also write colourised labels (labels/color/)')
    r.add_argument('-q', '--quiet', action='store_true', help='no progress bar')

    e = sub.add_parser('eval', help='per-class IoU / mIoU of label PNGs against ground truth')
    e.add_argument('pred_dir', help='folder of predicted label PNGs (uint8 class ids)')
    e.add_argument('gt_dir', help='folder of ground-truth label PNGs (matched by file stem)')
    e.add_argument('--classes', default='cityscapes', choices=('cityscapes', 'camvid'))
    e.add_argument('--gt-format', default=None, choices=('labelids', 'trainids', 'camvid'),
                   help='ground-truth encoding (default: labelids for cityscapes, camvid for camvid)')
    e.add_argument('--json', default=None, help='write the results as JSON here')
    e.add_argument('-q', '--quiet', action='store_true', help='no progress bar')

    b = sub.add_parser('bench', help='EVS Table 2 on ../shared/data/cityscapes_seq')
    from .core import bench as _bench
    _bench.add_arguments(b)

    for name, (_, _, help_) in DELEGATES.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


# ---------------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    import collections
    import itertools

    from tqdm import tqdm

    from .core.flow import FlowEstimator
    from .core.io import LabelWriter, OverlayVideoWriter, open_source, write_json
    from .core.models import load_model
    from .core.pipeline import VideoSegmenter, far_apart_warning, scale_for_network
    from .core.schedule import OperatingPoint, get_operating_point

    src = open_source(args.source, topic=args.topic, fps=args.fps, skip_bad=not args.strict)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f'--out exists and is not a folder: {out_dir}')
    model = load_model(args.model, weights=args.weights, device=args.device, backend=args.backend)

    skipped = []   # frames that could not be read: no label file, listed in the summary

    def readable(frames):
        for fr in frames:
            if fr.error is None:
                yield fr
                continue
            skipped.append({'index': fr.index, 'stem': fr.stem, 'error': fr.error})
            tqdm.write(f'warning: frame {fr.stem} skipped: {fr.error}', file=sys.stderr)

    raw = iter(src)
    if args.max_frames:
        raw = itertools.islice(raw, args.max_frames)
    it = readable(raw)
    try:
        first = next(it)
    except StopIteration:
        if skipped:
            raise InputError(f'no readable frame in {args.source} ({len(skipped)} unreadable; the first: '
                             f'{skipped[0]["error"]})') from None
        raise InputError(f'no frames in {args.source}') from None
    size = (first.rgb.shape[1], first.rgb.shape[0])
    scale = scale_for_network(size, model.input_size) if args.scale == 'auto' else args.scale
    if args.preset:
        op = get_operating_point(args.preset, scale=scale, interval=args.interval)
        if args.no_warp:
            op = get_operating_point(op, warp=False, refine=False)
        if args.refine:
            op = get_operating_point(op, refine=True)
    else:
        op = OperatingPoint('cli', scale=scale, interval=args.interval or 5, warp=not args.no_warp,
                            refine=args.refine)
    schedule = None
    if args.schedule:
        s = args.schedule
        if s == 'fixed':
            s = {'type': 'fixed', 'interval': op.interval}
        elif s == 'adaptive':
            s = {'type': 'adaptive', 'max_interval': max(op.interval, 1) * 2}
        elif s == 'budget':
            s = {'type': 'budget', 'camera_rate_hz': src.fps or 25.0}
        schedule = s
    from .core.temporal import REGION_MODES, TWO_SIDED_MODES
    if args.region_tile_area is not None and args.temporal_mode not in REGION_MODES:
        raise ConfigError('--region-tile-area applies to --temporal-mode region / region-ctx only')
    if args.region_shape is not None and args.temporal_mode not in REGION_MODES:
        raise ConfigError('--region-shape applies to --temporal-mode region / region-ctx only')
    if args.max_delay is not None and not args.two_sided:
        raise ConfigError('--max-delay applies to --two-sided only')
    if args.no_trust and not args.two_sided:
        raise ConfigError('--no-trust applies to --two-sided only')
    if args.two_sided and args.temporal_mode not in (None,) + TWO_SIDED_MODES:   # (None: warp)
        raise ConfigError(f'--two-sided combines with --temporal-mode {" / ".join(TWO_SIDED_MODES)} '
                          f'only, not {args.temporal_mode}')
    if args.two_sided and not op.warp:
        raise ConfigError('--two-sided needs warping (drop --no-warp or the hold preset)')
    seg = VideoSegmenter(model, op, flow=FlowEstimator('dis', preset=args.flow_preset), schedule=schedule)
    runner = seg
    if args.two_sided:
        from .core.bidirectional import TwoSidedSegmenter
        runner = TwoSidedSegmenter(seg, max_delay=args.max_delay, trust=not args.no_trust)
    if args.temporal_mode:   # as the ROS graph runs it (caching: the keyframe's cached maps warped with the state)
        from .core.temporal import attach_mode
        attach_mode(seg, args.temporal_mode, model, weights=args.temporal_weights, device=args.device,
                    tile_area=args.region_tile_area, tile_shape=args.region_shape)

    labels_w = LabelWriter(out_dir / 'labels', class_set=model.class_set, color=args.color)
    overlay = None if args.no_overlay else OverlayVideoWriter(out_dir / 'overlay.mp4', src.fps or 25.0,
                                                             model.class_set)
    total = None
    try:
        total = len(src)
    except TypeError:
        pass
    if args.max_frames:
        total = min(total, args.max_frames) if total else args.max_frames
    frames = itertools.chain([first], it)
    n = 0
    n_kf = 0
    degraded = 0
    waiting = collections.deque()   # frames whose output is not final yet (two-sided), in order

    def emit(outs):
        nonlocal n, n_kf, degraded
        for out in outs:
            fr = waiting.popleft()
            labels_w.write(fr.stem, out.labels)
            if overlay is not None:
                overlay.write(fr.rgb, out.labels)
            n += 1
            n_kf += int(out.is_keyframe)
            degraded += int(out.degraded)

    try:
        for fr in tqdm(frames, total=total, unit='frame', disable=args.quiet, desc='vidseg run'):
            waiting.append(fr)
            emit(runner.process(fr.rgb, stamp=fr.stamp_s) if args.two_sided
                 else [seg.process(fr.rgb, stamp=fr.stamp_s)])
        if args.two_sided:
            emit(runner.flush())
    finally:
        if overlay is not None:
            overlay.close()
    s = runner.summary()
    summary = {
        'source': src.describe(), 'frames': n, 'keyframes': n_kf, 'degraded_frames': degraded,
        'input_size': list(size), 'working_size': list(seg._work_size or size),
        'mean_ms': {k: (None if v is None else 1000 * v) for k, v in s['mean_s'].items()},
        'mean_keyframe_ms': None if s['mean_keyframe_s'] is None else 1000 * s['mean_keyframe_s'],
        'mean_propagated_ms': None if s['mean_propagated_s'] is None else 1000 * s['mean_propagated_s'],
        'fps': s['fps'],
        'model': {'name': model.name, 'input_size': list(model.input_size), 'backend': model.backend,
                  'device': model.device, 'class_set': model.class_set.name},
        'operating_point': op.to_dict(), 'temporal_mode': args.temporal_mode or 'warp',
        'schedule': s['schedule'], 'flow': seg.flow.describe(),
        'propagator': s['propagator'], 'two_sided': s.get('two_sided'),
        'skipped_frames': skipped,
        'flow_failures': s.get('flow_failures', 0), 'flow_error': s.get('flow_error'),
        # how well the flow held between consecutive frames (frames far apart: far_apart_warning)
        'inconsistent_fraction': s.get('inconsistent_fraction'),
        'region_context': ({'used': seg.refiner.context_used, 'missing': seg.refiner.context_missing}
                           if hasattr(seg.refiner, 'context_used') else None),
        'outputs': {'labels': str(out_dir / 'labels'),
                    'overlay': None if overlay is None else str(overlay.path)},
    }
    write_json(out_dir / 'summary.json', summary)
    if not args.quiet:
        fps = summary['fps']
        print(f'{n} frames ({n_kf} keyframes), {fps:.2f} fps, '
              f'keyframe {summary["mean_keyframe_ms"] or 0:.0f} ms, propagated '
              f'{summary["mean_propagated_ms"] or 0:.1f} ms -> {out_dir}')
    if summary['flow_failures']:   # also with -q: degraded labels are never silent
        print(f'warning: {summary["flow_failures"]} frame(s) without flow ({summary["flow_error"]}): their labels '
              f'are held from the previous frame (degraded; summary.json: flow_failures)', file=sys.stderr)
    far = far_apart_warning(summary['inconsistent_fraction'], summary['schedule'])
    if far:   # also with -q, like the skipped frames: labels that are likely wrong are not silent either
        print(far, file=sys.stderr)
    if skipped:   # also with -q: a frame without labels is never silent
        print(f'warning: {len(skipped)} unreadable frame(s) skipped, no labels for them: '
              f'{", ".join(s["stem"] for s in skipped[:5])}{" ..." if len(skipped) > 5 else ""} '
              f'(summary.json: skipped_frames)', file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- eval
_STEM_SUFFIXES = ('_leftImg8bit', '_gtFine_labelIds', '_gtFine_labelTrainIds', '_gtCoarse_labelIds',
                  '_labelIds', '_labelTrainIds', '_trainIds', '_L', '_annot')


def _key(stem: str) -> str:
    for suf in _STEM_SUFFIXES:
        if stem.endswith(suf):
            return stem[:-len(suf)]
    return stem


def _label_files(folder: Path, what: str) -> dict:
    if not folder.exists():
        raise InputError(f'{what} folder not found: {folder}')
    if not folder.is_dir():
        raise InputError(f'{what} is not a folder: {folder}')
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() == '.png':
            files.setdefault(p.stem, p)
    if not files:
        raise InputError(f'no .png label files in {what} folder: {folder}')
    return files


def evaluate_folders(pred_dir, gt_dir, classes='cityscapes', gt_format=None, progress=False) -> dict:
    """Per-class IoU / mIoU / pixel accuracy of predicted label PNGs against ground truth (by stem)."""
    import cv2
    from tqdm import tqdm

    from .core.classes import get_class_set
    from .core.io import read_label_png
    from .core.metrics import ConfusionMatrix

    cs = get_class_set(classes)
    fmt = gt_format or ('camvid' if cs.name == 'camvid' else 'labelids')
    preds = _label_files(Path(pred_dir), 'prediction')
    gts = _label_files(Path(gt_dir), 'ground-truth')
    gt_by_key = {}
    for stem, p in gts.items():
        gt_by_key.setdefault(stem, p)
        gt_by_key.setdefault(_key(stem), p)
    pairs = []
    for stem, p in preds.items():
        g = gt_by_key.get(stem) or gt_by_key.get(_key(stem))
        if g is not None:
            pairs.append((stem, p, g))
    if not pairs:
        raise InputError(f'no prediction in {pred_dir} matches a ground-truth file in {gt_dir} by stem '
                         f'(e.g. {next(iter(preds))!r} vs {next(iter(gts))!r})')
    cm = ConfusionMatrix(cs.num_classes)
    resized = 0
    for stem, p, g in tqdm(pairs, disable=not progress, unit='img', desc='vidseg eval'):
        pred = read_label_png(p, 'trainids')
        gt = read_label_png(g, fmt)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
            resized += 1
        cm.update(pred, gt)
    res = cm.summary(cs.names)
    if not res['pixels']:   # every ground-truth pixel is the ignore label: no score (not NaN in the JSON)
        res['miou'] = res['pixel_accuracy'] = None
    res.update({'class_set': cs.name, 'gt_format': fmt, 'images': len(pairs),
                'unmatched_predictions': len(preds) - len(pairs), 'resized_predictions': resized,
                'pred_dir': str(pred_dir), 'gt_dir': str(gt_dir)})
    return res


def cmd_eval(args) -> int:
    import numpy as np

    from .core.classes import get_class_set
    from .core.io import write_json
    from .core.metrics import format_iou_table

    res = evaluate_folders(args.pred_dir, args.gt_dir, args.classes, args.gt_format, progress=not args.quiet)
    cs = get_class_set(args.classes)
    ious = np.array([np.nan if res['iou'][n] is None else res['iou'][n] for n in cs.names])
    print(format_iou_table(cs.names, ious, res['miou']))
    pa = res['pixel_accuracy']
    if pa is None:   # also with -q: a score of nothing is never silent
        print(f'warning: no labelled pixel in the ground truth of {res["images"]} image(s): every pixel is '
              f'the ignore label for --classes {res["class_set"]} --gt-format {res["gt_format"]} '
              f'(the wrong --gt-format?)', file=sys.stderr)
    print(f'pixel accuracy  {"n/a" if pa is None else f"{100 * pa:.2f} %"}   ({res["images"]} images'
          + (f', {res["unmatched_predictions"]} predictions without ground truth' if res['unmatched_predictions'] else '')
          + ')')
    if args.json:
        write_json(args.json, res)
    return 0


# ---------------------------------------------------------------------------------------------- main
def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) and \
            getattr(e, 'filename', None):
        msg = f'{e.strerror}: {e.filename}'
    return msg


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATES:
            import importlib
            mod, fn, _ = DELEGATES[argv[0]]
            try:
                m = importlib.import_module(mod)
            except ImportError as e:
                raise ConfigError(f'{argv[0]} is not available ({e})') from None
            rc = getattr(m, fn)(argv[1:])
            return int(rc or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.cmd is None:
            parser.print_help()
            return 2
        if args.cmd == 'run':
            return cmd_run(args)
        if args.cmd == 'eval':
            return cmd_eval(args)
        if args.cmd == 'bench':
            from .core import bench
            return bench.run_from_args(args)
        parser.error(f'unknown command {args.cmd}')
    except VidsegError as e:
        print(f'error: {_one_line(e)}', file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f'error: {type(e).__name__}: {_one_line(e)}' if not isinstance(e, OSError) else
              f'error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
