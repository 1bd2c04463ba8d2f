"""Keyframe feature caching (DFF, Zhu et al. 2017; the FPN-caching thesis): on non-keyframes run only
the low-level part of ESPNetv2 on the current frame and reuse the keyframe's high-level maps,
optionally warped to the current frame by optical flow (``flow(t, k)`` computed directly between
the keyframe and the current frame on the network-input grid).

Levels cached (``ESPNetv2Seg.forward_low`` / ``forward_high``):

* ``levels=1``: level4 (7 EESP units + downsampler) and the first decoder EPP are reused
  ('d1', H/16); level1..level3 and the rest of the decoder run on the current frame;
* ``levels=2``: also level3 ('e3', H/8) is reused; only level1, level2 and the decoder run.

What it can save is bounded by where ESPNetv2 spends its time: ``stage_costs`` / ``vidseg
profile-stages`` measures it per stage (on the 2-core CPU, caching 1 level still recomputes ~80 % of
a keyframe's time, 2 levels ~64 %: the high-resolution decoder stages dominate; BENCHMARKS.md 7.1).

Two drivers of the same split:

* ``FeatureCachingSegmenter`` (offline ``vidseg run`` / ``bench-temporal``): its own
  ``process(rgb) -> CachedFrame`` loop with a keyframe schedule, in place of the keyframe network +
  Propagator; the cached maps are warped with a flow computed directly between the keyframe and the
  current frame.
* ``CachedFeatureRefresher`` (the ROS graph, ``temporal_mode:=cache1|cache2``): the keyframe node
  runs the full network (``keyframe_semantics``) and publishes the cached maps with the labels; they
  travel in the propagated state (``Semantics.features``), warped frame to frame by the Propagator
  with the flow node's flows like the probabilities; on each propagated frame the propagation node's
  ``TemporalPropagator`` calls ``refresh``: the low-level part on the current image, the decoder on
  the warped maps.

A keyframe frame's output is exactly the full network's output in both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .errors import ConfigError, InputError, ModelError

CACHE_KEYS = {1: ('d1',), 2: ('d1', 'e3')}


@dataclass
class CachedFrame:
    """Network-resolution output of one frame: softmax ``probs`` (K, h, w), class-id ``labels``."""

    probs: np.ndarray
    labels: np.ndarray
    is_keyframe: bool
    distance: int
    timings: dict = field(default_factory=dict)


def split_network(model):
    """The torch ESPNetv2 network of ``model`` (ModelError when it cannot be split)."""
    net = getattr(model, 'net', None)
    if net is None or not hasattr(net, 'forward_low') or isinstance(net, torch.jit.ScriptModule):
        raise ModelError(f'feature caching needs an ESPNetv2 model with a torch network '
                         f'(got {getattr(model, "name", type(model).__name__)})')
    return net


def network_input(model, rgb, device) -> torch.Tensor:
    """(1, 3, h, w) network input of an RGB uint8 frame (InputError naming what came instead)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f'expected an RGB uint8 image (H, W, 3), got '
                         f'{getattr(rgb, "shape", type(rgb).__name__)}')
    return torch.from_numpy(model.preprocess(rgb)).to(device)


def semantics_from_logits(logits: torch.Tensor, class_map, size_wh) -> tuple:
    """(1, K, h, w) logits of a keyframe pass -> (Semantics at ``size_wh``, non-finite pixel count), sanitised
    as the pipeline's keyframes are (the keyframe passes that also return maps: caching, region context)."""
    from .models.base import sanitize_segmentation, segmentation_from_logits
    from .propagation import semantics_from_segmentation
    seg, bad = sanitize_segmentation(segmentation_from_logits(logits[0].float().cpu(), class_map))
    return semantics_from_segmentation(seg, class_map, size_wh), bad


def _check_levels(levels) -> int:
    if int(levels) not in CACHE_KEYS:
        raise ConfigError(f'caching levels must be 1 or 2, got {levels}')
    return int(levels)


class _FullWithMaps(torch.nn.Module):
    """The whole network, returning (logits, *cached maps): what a keyframe computes (ONNX export)."""

    def __init__(self, net, keys):
        super().__init__()
        self.net, self.keys = net, tuple(keys)

    def forward(self, x):
        logits, maps = self.net.forward_high(self.net.forward_low(x), return_features=True)
        return (logits,) + tuple(maps[k] for k in self.keys)


class _CachedPart(torch.nn.Module):
    """The low-level part on ``x`` + the decoder on the given cached maps -> logits (ONNX export)."""

    def __init__(self, net, levels, keys):
        super().__init__()
        self.net, self.levels, self.keys = net, levels, tuple(keys)

    def forward(self, x, *cached):
        low = self.net.forward_low(x, levels=3 if self.levels == 1 else 2)
        return self.net.forward_high(low, cached=dict(zip(self.keys, cached)))


class _OrtSplit:
    """The two halves as onnxruntime graphs (exported once, verified against torch, cached on disk)."""

    def __init__(self, model, full: _FullWithMaps, part: _CachedPart):
        from .models.backends import OrtRunner, export_onnx_module, state_hash, synthetic_image
        w, h = model.input_size
        keys = part.keys
        x = torch.from_numpy(model.preprocess(synthetic_image((w, h))))
        with torch.inference_mode():
            maps = full(x)[1:]
        key = f'split{part.levels}_{state_hash(part.net)[:16]}_{w}x{h}'
        p_full = export_onnx_module(full, {'input': x}, ('logits',) + keys, key + '_keyframe',
                                    f'{model.name} (keyframe, cached maps)')
        p_part = export_onnx_module(part, dict({'input': x}, **{k: m.clone() for k, m in zip(keys, maps)}),
                                    ('logits',), key + '_cached', f'{model.name} (low-level part + decoder)')
        self.keys = keys
        self.full, self.part = OrtRunner(p_full), OrtRunner(p_part)

    def keyframe(self, x: np.ndarray):
        out = self.full.run({'input': x})
        return torch.from_numpy(out[0]), dict(zip(self.keys, out[1:]))

    def cached(self, x: np.ndarray, maps: dict) -> torch.Tensor:
        feeds = {'input': x}
        feeds.update({k: np.ascontiguousarray(maps[k], np.float32)[None] for k in self.keys})
        return torch.from_numpy(self.part.run(feeds)[0])


class CachedFeatureRefresher:
    """Feature caching as a propagation module (see the module docstring; the ROS graph's cache1/cache2).

    ``keyframe_semantics(rgb, working_size)`` -> (Semantics with ``features``, non-finite pixel count):
    the full network on a keyframe, exactly the keyframe network's labels and probabilities.
    ``refresh(image, warped, mask, prev=None, flow_bwd=None)`` -> Semantics: the network's output for
    the current image from its low-level part and the (already warped) cached maps of ``warped``.
    ``backend``: 'auto' (onnxruntime when the model runs on it, on the CPU: both halves exported and
    verified against torch within ``EXPORT_TOL``), 'torch' or 'onnxruntime'.
    """

    def __init__(self, model, levels: int = 1, backend: str = 'auto'):
        self.model, self.net = model, split_network(model)
        self.levels = _check_levels(levels)
        self.keys = CACHE_KEYS[self.levels]
        self.device = torch.device(getattr(model, 'device', 'cpu'))
        self.class_map = np.asarray(model.output_to_class, np.uint8)
        self.calls = 0
        if backend not in ('auto', 'torch', 'onnxruntime'):
            raise ConfigError(f"caching backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
        if backend == 'auto':
            backend = 'onnxruntime' if getattr(model, 'backend', '') == 'onnxruntime' and \
                self.device.type == 'cpu' else 'torch'
        if backend == 'onnxruntime' and self.device.type != 'cpu':
            raise ConfigError('feature caching on onnxruntime runs on the CPU; use backend torch on '
                              f'{self.device}')
        self.backend = backend
        self.full = _FullWithMaps(self.net, self.keys).eval()          # the torch halves (also what is exported)
        self.part = _CachedPart(self.net, self.levels, self.keys).eval()
        self.ort = _OrtSplit(model, self.full, self.part) if backend == 'onnxruntime' else None

    def _semantics(self, logits: torch.Tensor, size_wh):
        return semantics_from_logits(logits, self.class_map, size_wh)

    def keyframe_semantics(self, rgb: np.ndarray, working_size_wh):
        x = network_input(self.model, rgb, self.device)
        if self.ort is not None:
            logits, maps = self.ort.keyframe(x.cpu().numpy())
            feats = {k: np.ascontiguousarray(maps[k][0]) for k in self.keys}
        else:
            with torch.inference_mode():
                logits, *maps = self.full(x)
            feats = {k: np.ascontiguousarray(m[0].float().cpu().numpy()) for k, m in zip(self.keys, maps)}
        sem, bad = self._semantics(logits, working_size_wh)
        sem.features = feats
        return sem, bad

    def refresh(self, image, warped, mask=None, prev=None, flow_bwd=None):
        feats = warped.features or {}
        missing = [k for k in self.keys if k not in feats]
        if missing:
            raise InputError(f'feature caching: the keyframe brought no cached map {", ".join(missing)} (the '
                             f'keyframe node must publish them: cache_levels {self.levels})')
        if warped.class_map is not None and not np.array_equal(np.asarray(warped.class_map, np.uint8),
                                                                self.class_map):
            raise ConfigError('feature caching: the keyframe semantics have other class planes than the '
                              f'network {self.model.name}')
        x = network_input(self.model, image, self.device)
        if self.ort is not None:
            logits = self.ort.cached(x.cpu().numpy(), feats)
        else:
            cached = [torch.from_numpy(np.ascontiguousarray(feats[k], np.float32))[None].to(self.device)
                      for k in self.keys]
            with torch.inference_mode():
                logits = self.part(x, *cached)
        sem, _ = self._semantics(logits, warped.size)
        sem.features = feats        # the cache travels on: the next step warps it again
        self.calls += 1
        return sem

    def __call__(self, image, warped, mask) -> np.ndarray:
        """Plain ``Propagator`` refiner interface (float probabilities; the Propagator's IAM blend applies):
        the ``temporal.TemporalPropagator``, which calls :meth:`refresh`, is the intended driver."""
        from .propagation import dequantize_probs
        return dequantize_probs(self.refresh(image, warped, mask).probs)


class FeatureCachingSegmenter:
    """Keyframe feature caching for an ESPNetv2 model (loaded with a torch ``net``).

    ``levels``: 1 or 2 (see module docstring). ``schedule``: an int interval S (keyframe every S
    frames) or a Schedule (``is_keyframe(index, stats)``). ``warp``: flow-warp the cached maps (DFF)
    or reuse them as they are. ``flow``: a FlowEstimator (default DIS ultrafast).
    """

    def __init__(self, model, levels: int = 1, schedule=5, warp: bool = True, flow=None):
        net = split_network(model)
        self.model, self.net, self.levels = model, net, _check_levels(levels)
        self.keys = CACHE_KEYS[self.levels]
        if isinstance(schedule, int):
            if schedule < 1:
                raise ConfigError(f'keyframe interval must be >= 1, got {schedule}')
            from .schedule import FixedSchedule
            schedule = FixedSchedule(schedule)
        self.schedule = schedule
        self.warp = bool(warp)
        if flow is None:
            from .flow import FlowEstimator
            flow = FlowEstimator('dis', preset='ultrafast')
        self.flow = flow
        self.device = torch.device(getattr(model, 'device', 'cpu'))
        self.reset()

    def reset(self):
        self._cache = None
        self._key_gray = None
        self.frame_index = 0
        self._dist = -1
        if hasattr(self.schedule, 'reset'):
            self.schedule.reset()

    def _input(self, rgb):
        x = network_input(self.model, rgb, self.device)
        w, h = self.model.input_size
        small = rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        return x, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    def keyframe_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full network on a keyframe; fills the cache."""
        with torch.inference_mode():
            logits, maps = self.net.forward_high(self.net.forward_low(x), return_features=True)
        self._cache = {k: maps[k] for k in self.keys}
        return logits

    def cached_logits(self, x: torch.Tensor, flow=None) -> torch.Tensor:
        """Low-level part on ``x`` + the cached (flow-warped when ``flow`` is given) high level."""
        if self._cache is None:
            raise InputError('no keyframe cached yet')
        from .warp import make_remap, warp_features
        cached = self._cache
        if flow is not None:
            cached = {}
            for k, v in self._cache.items():
                h, w = int(v.shape[2]), int(v.shape[3])
                cached[k] = warp_features(v, make_remap(flow, (w, h)))
        with torch.inference_mode():
            low = self.net.forward_low(x, levels=3 if self.levels == 1 else 2)
            return self.net.forward_high(low, cached=cached)

    def process(self, rgb: np.ndarray, keyframe: bool | None = None) -> CachedFrame:
        """Segment the next frame (``keyframe`` overrides the schedule)."""
        t0 = time.perf_counter()
        x, gray = self._input(rgb)
        idx = self.frame_index
        self.frame_index += 1
        is_kf = keyframe if keyframe is not None else self.schedule.is_keyframe(idx, {})
        if self._cache is None:
            is_kf = True
        tm = {}
        if is_kf:
            logits = self.keyframe_logits(x)
            self._key_gray = gray
            self._dist = 0
        else:
            flow = None
            if self.warp:
                t1 = time.perf_counter()
                flow = self.flow.compute_native(gray, self._key_gray)   # flow(t, k) on t's grid
                tm['flow'] = time.perf_counter() - t1
            logits = self.cached_logits(x, flow)
            self._dist += 1
        with torch.inference_mode():
            t = logits[0]
            probs = torch.softmax(t, 0).cpu().numpy()
            idx_max = t.argmax(0).to(torch.uint8).cpu().numpy()
        tm['total'] = time.perf_counter() - t0
        if hasattr(self.schedule, 'observe'):
            self.schedule.observe(is_kf, tm['total'])
        return CachedFrame(probs, self.model.output_to_class[idx_max], bool(is_kf), self._dist, tm)


# ------------------------------------------------------------------ what caching can save at most
STAGES = ('level1', 'level2', 'level3', 'level4', 'dec1', 'dec2', 'dec3', 'dec4')
STAGE_RES = {'level1': 2, 'level2': 4, 'level3': 8, 'level4': 16, 'dec1': 16, 'dec2': 8, 'dec3': 4, 'dec4': 2}
CACHED_STAGES = {1: ('level4', 'dec1'), 2: ('level3', 'level4', 'dec1')}


def _stage_fns(net, x):
    """(name, fn) of the ESPNetv2 stages in order; each fn reads its inputs from ``m`` (filled in order)."""
    from .models.espnetv2 import _resize_ac, _up2
    bn = net.base_net
    h, w = int(x.shape[2]), int(x.shape[3])
    return [
        ('level1', lambda m: bn.level1(x)),
        ('level2', lambda m: bn.level2_0(m['level1'], x)),
        ('level3', lambda m: net._level3(m['level2'], x)),
        ('level4', lambda m: net.level4(m['level3'], x)),
        ('dec1', lambda m: net.bu_dec_l1(m['level4'])),
        ('dec2', lambda m: net.bu_dec_l2(net.bu_br_l2(_up2(m['dec1']) + net.merge_enc_dec_l2(m['level3'])))),
        ('dec3', lambda m: net.bu_dec_l3(net.bu_br_l3(_up2(m['dec2']) + net.merge_enc_dec_l3(m['level2'])))),
        ('dec4', lambda m: _resize_ac(net.bu_dec_l4(net.bu_br_l4(_up2(m['dec3']) + net.merge_enc_dec_l4(
            m['level1']))), (h, w))),
    ]


def stage_costs(net, input_wh, rounds: int = 7, progress: bool = False) -> dict:
    """Cost of each stage of an ESPNetv2 network (torch, current thread count) at ``input_wh``:
    multiply-accumulates of its convolutions (``torch.utils.flop_counter``, exact) and its time
    (median over ``rounds`` interleaved rounds, the whole network timed in the same rounds), and the
    share of the network that feature caching of 1 / 2 levels must still recompute on every frame
    (its cost floor, before the warp of the cached maps). Stages: ``STAGES`` (encoder levels 1-4,
    decoder EPP stages 1-4 with their merges; ``STAGE_RES``: output stride)."""
    from torch.utils.flop_counter import FlopCounterMode
    from tqdm import tqdm
    w, h = int(input_wh[0]), int(input_wh[1])
    if w % 16 or h % 16 or w < 32 or h < 32:
        raise ConfigError(f'stage costs need an input of at least 32x32 in multiples of 16, got {w}x{h}')
    x = torch.zeros(1, 3, h, w).normal_(generator=torch.Generator().manual_seed(0))
    fns = _stage_fns(net, x)
    macs, maps = {}, {}
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for name, fn in fns:
                with FlopCounterMode(display=False) as fc:
                    maps[name] = fn(maps)
                macs[name] = fc.get_total_flops() / 2.0
            with FlopCounterMode(display=False) as fc:
                full_out = net(x)
            full_macs = fc.get_total_flops() / 2.0
            max_diff = float((maps['dec4'] - full_out).abs().max())
            times = {name: [] for name, _ in fns}
            times['full'] = []
            for _ in tqdm(range(int(rounds) + 1), desc='stage costs', disable=not progress):
                for name, fn in fns:
                    t0 = time.perf_counter()
                    fn(maps)
                    times[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                net(x)
                times['full'].append(time.perf_counter() - t0)
    finally:
        net.train(was_training)
    ms = {k: 1000.0 * float(np.median(v[1:])) for k, v in times.items()}   # round 0 = warm-up
    stage_ms = sum(ms[n] for n in STAGES)
    rows = [{'stage': n, 'stride': STAGE_RES[n], 'gmac': macs[n] / 1e9, 'mac_share': macs[n] / full_macs,
             'ms': ms[n], 'time_share': ms[n] / stage_ms} for n in STAGES]
    floor = {}
    for lv, cached in CACHED_STAGES.items():
        floor[lv] = {'cached': list(cached),
                     'mac_share': sum(r['mac_share'] for r in rows if r['stage'] not in cached),
                     'time_share': sum(r['time_share'] for r in rows if r['stage'] not in cached)}
    return {'input_size': [w, h], 'threads': torch.get_num_threads(), 'rounds': int(rounds),
            'full': {'gmac': full_macs / 1e9, 'ms': ms['full'], 'stages_ms': stage_ms},
            'max_abs_diff_vs_full': max_diff, 'stages': rows, 'caching_floor': floor}


def format_stage_costs(r: dict) -> str:
    w, h = r['input_size']
    lines = [f'ESPNetv2 stages at {w}x{h} (torch, {r["threads"]} thread(s), median of {r["rounds"]} rounds; '
             f'whole network {r["full"]["ms"]:.1f} ms, stages summed {r["full"]["stages_ms"]:.1f} ms, '
             f'{r["full"]["gmac"]:.3f} GMAC)',
             f'{"stage":<8} {"stride":>6} {"GMAC":>7} {"MAC %":>6} {"ms":>7} {"time %":>7}']
    for s in r['stages']:
        lines.append(f'{s["stage"]:<8} {"1/" + str(s["stride"]):>6} {s["gmac"]:>7.3f} {100 * s["mac_share"]:>6.1f} '
                     f'{s["ms"]:>7.1f} {100 * s["time_share"]:>7.1f}')
    for lv, f in r['caching_floor'].items():
        lines.append(f'caching {lv} level(s) reuses {"+".join(f["cached"])}: recomputes {100 * f["mac_share"]:.0f} % '
                     f'of the MACs and {100 * f["time_share"]:.0f} % of the time on every frame')
    return '\n'.join(lines)


def profile_main(argv=None) -> int:
    """``vidseg profile-stages``: where ESPNetv2 spends its time, i.e. what feature caching can save."""
    import argparse
    import json
    import sys
    from pathlib import Path

    from .errors import VidsegError
    from .models import load_model
    p = argparse.ArgumentParser(prog='vidseg profile-stages', description=profile_main.__doc__)
    p.add_argument('--model', default='espnetv2_s2.0_512x256', help='an ESPNetv2 model name or config')
    p.add_argument('--size', default=None, help='input size WxH (default: the model\'s)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1, as the CV table)')
    p.add_argument('--rounds', type=int, default=15, help='interleaved timing rounds')
    p.add_argument('--out', default='runs/stage_costs.json', help='JSON output')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bar')
    a = p.parse_args(argv)
    try:
        from .temporal_train import parse_size
        size = parse_size(a.size) if a.size else None
        if a.threads < 1 or a.rounds < 1:
            raise ConfigError('--threads and --rounds must be >= 1')
        torch.set_num_threads(a.threads)
        model = load_model(a.model, backend='torch', input_size=size)
        net = getattr(model, 'net', None)
        if net is None or not hasattr(net, 'forward_low'):
            raise ModelError(f'stage costs need an ESPNetv2 model, got {model.name}')
        r = stage_costs(net, model.input_size, a.rounds, progress=not a.quiet)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    r['model'] = model.name
    print(format_stage_costs(r))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + '\n')
    print(f'wrote {out}')
    return 0
