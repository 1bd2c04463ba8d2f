"""Backend benchmark (``vidseg bench-backends`` / ``python -m vidseg_ros.core.models.backend_bench``):
time the keyframe network under torch (inference_mode, no_grad, channels_last), TorchScript and
onnxruntime in one process (median of N runs after warm-up), at several input sizes and thread
counts; report the max |logit| difference against eager torch. Its result set
``vidseg_ros.core.models.AUTO_BACKEND``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

VARIANTS = ('torch', 'torch_no_grad', 'torch_channels_last', 'torchscript', 'onnxruntime')


def _parse_size(s: str):
    from ..errors import ConfigError
    try:
        w, h = (int(v) for v in s.lower().split('x'))
    except ValueError:
        raise ConfigError(f'size must be WxH, got {s!r}') from None
    return w, h


def _runner(variant, model, device):
    """Callable (1,3,h,w) numpy -> torch tensor for one variant."""
    from .backends import OrtRunner, TorchRunner, export_onnx, make_torchscript, state_hash
    from .base import Preprocessor
    net = model.net
    if variant == 'torch':
        return TorchRunner(net, device)
    if variant == 'torch_no_grad':
        def run(x):
            with torch.no_grad():
                return net(torch.from_numpy(x).to(device)).cpu()
        return run
    if variant == 'torch_channels_last':
        import copy
        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
        return TorchRunner(cl, device, channels_last=True)
    if variant == 'torchscript':
        return TorchRunner(make_torchscript(net, model.input_size, device), device)
    if variant == 'onnxruntime':
        cfg = model.config
        path = export_onnx(net.cpu(), Preprocessor(cfg), cfg.input_size,
                           f'{cfg.arch}_{state_hash(net)[:16]}', cfg.name)
        net.to(device)
        return OrtRunner(path, device, torch.get_num_threads())
    raise ValueError(variant)


def _time(fn, x, runs, warmup):
    for _ in range(warmup):
        fn(x)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        ts.append((time.perf_counter() - t0) * 1000.0)
    return ts


def bench(models, sizes, threads, variants, runs=10, warmup=2, device='cpu', progress=True):
    """List of result rows (dicts)."""
    from tqdm import tqdm

    from . import load_model
    from .backends import synthetic_image
    rows = []
    jobs = [(m, s, t) for m in models for s in sizes for t in threads]
    for name, size, nth in tqdm(jobs, desc='bench-backends', disable=not progress):
        torch.set_num_threads(nth)
        model = load_model(name, backend='torch', device=device, input_size=size)
        img = synthetic_image((size[0] * 2, size[1] * 2), seed=1)
        t0 = time.perf_counter()
        x = model.preprocess(img)
        pre_ms = (time.perf_counter() - t0) * 1000.0
        ref = None
        for variant in variants:
            if device != 'cpu' and variant == 'onnxruntime':
                continue
            fn = _runner(variant, model, device)
            out = fn(x)
            if ref is None:
                ref = out
            ts = _time(fn, x, runs, warmup)
            rows.append({'model': name, 'size': f'{size[0]}x{size[1]}', 'threads': nth,
                         'backend': variant, 'median_ms': statistics.median(ts),
                         'min_ms': min(ts), 'max_abs_diff_vs_torch': float((out - ref).abs().max()),
                         'preprocess_ms': pre_ms, 'runs': runs})
    return rows


def format_table(rows) -> str:
    hdr = f'{"model":<16} {"size":>9} {"thr":>3} {"backend":<20} {"median ms":>10} {"min ms":>9} ' \
          f'{"speedup":>8} {"max|diff|":>10}'
    lines = [hdr, '-' * len(hdr)]
    base = {(r['model'], r['size'], r['threads']): r['median_ms'] for r in rows
            if r['backend'] == 'torch'}
    for r in rows:
        b = base.get((r['model'], r['size'], r['threads']))
        sp = f'{b / r["median_ms"]:.2f}x' if b else '-'
        lines.append(f'{r["model"]:<16} {r["size"]:>9} {r["threads"]:>3} {r["backend"]:<20} '
                     f'{r["median_ms"]:>10.1f} {r["min_ms"]:>9.1f} {sp:>8} '
                     f'{r["max_abs_diff_vs_torch"]:>10.2e}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg bench-backends', description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['espnetv2_s2.0', 'espnetv2_s0.5'])
    p.add_argument('--sizes', nargs='+', default=['1024x512', '512x256'], help='WxH network input')
    p.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    p.add_argument('--backends', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    p.add_argument('--runs', type=int, default=10, help='timed runs (median reported)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=None, help='write the results as JSON here')
    args = p.parse_args(argv)
    from ..errors import VidsegError
    try:
        sizes = [_parse_size(s) for s in args.sizes]
        rows = bench(args.models, sizes, args.threads, args.backends, args.runs, args.warmup,
                     args.device)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_table(rows))
    fastest = {}
    for r in rows:
        if r['max_abs_diff_vs_torch'] <= 1e-3:
            k = (r['model'], r['size'], r['threads'])
            if k not in fastest or r['median_ms'] < fastest[k]['median_ms']:
                fastest[k] = r
    print('fastest exact backend: ' + ', '.join(f'{m} {s} t{t}: {r["backend"]}'
                                                for (m, s, t), r in fastest.items()))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        import onnxruntime
        out.write_text(json.dumps({'rows': rows, 'torch': torch.__version__,
                                   'onnxruntime': onnxruntime.__version__,
                                   'machine': platform.processor() or platform.machine(),
                                   'device': args.device}, indent=1))
        print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
