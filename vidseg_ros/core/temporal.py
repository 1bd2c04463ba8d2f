"""Registry of the temporal (propagation) modes of issue 4 and the Propagator that runs them.

``make_temporal_module(mode, model, weights=None, device='cpu')`` returns:

=============  ================================================================================
'warp'         None: plain warping (Propagator without refiner)
'iam-lowres'   ``LowResNetworkRefiner``: keyframe network at 1/4 input size, IAM blend (stand-in)
'refiner'      ``refiner.EVSRefiner``: EVS refiner, IAM blend (eq. 4)
'grfp'         ``grfp.STGRURefiner``: GRFP STGRU over the warped state + a cheap pass
'davss'        ``davss.DAVSSRefiner``: learned distortion map, correction only there
'cache1'       ``caching.FeatureCachingSegmenter(levels=1)``: reuse level4 of the keyframe
'cache2'       ``caching.FeatureCachingSegmenter(levels=2)``: reuse level3 + level4
'region'       ``region.RegionRefresher``: the keyframe network on the one tile the IAM and the
               labels' age say is worst (not a seed module; after EVS's IAM and DVSNet)
'region-ctx'   ``region.ContextRegionRefresher``: the same, the tile network given the keyframe's global
               context (its decoder's globally pooled branches; the keyframe passes them along)
=============  ================================================================================

How to call them:

* 'iam-lowres', 'refiner', 'grfp', 'davss' are Propagator refiners
  (``refiner(image, warped_semantics, iam_mask) -> probs``); they work in the plain
  ``propagation.Propagator`` (its IAM blend is applied on top), but their intended use is
  :class:`TemporalPropagator`, a Propagator subclass with the same protocol that (a) hands GRFP /
  DAVSS the previous image and the backward flow, (b) lets each module do its own blend (the
  refiner: IAM, eq. 4; GRFP: none, the STGRU output is the new state; DAVSS: its distortion map) and
  (c) calls the module even where the IAM flags nothing. 'region' also runs in the
  TemporalPropagator (its ``refresh`` returns the whole new state); 'region-ctx' too, and like the graph's
  caching it takes over the keyframe network call (``keyframe_semantics``: ``attach`` installs it). ``attach(segmenter, module)`` installs it
  in a ``pipeline.VideoSegmenter``; the ROS propagation node can construct a TemporalPropagator in
  place of the Propagator (same constructor arguments).
* 'cache1'/'cache2' need the network split: offline they replace keyframe network + Propagator with
  ``seg.process(rgb) -> CachedFrame`` (network-resolution probs/labels), keyframes by its schedule.
  The ROS graph runs the same split as a TemporalPropagator module instead
  (``caching.CachedFeatureRefresher``: the keyframe's cached maps travel in the state).

Weights: ``weights`` (a .pt written by ``vidseg train temporal``) or the packaged
``vidseg_ros/weights/<mode>.pt``; without either, untrained modules start as plain warping
(a warning is logged).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import ConfigError, ModelError, VidsegError
from .paths import WEIGHTS_DIR
from .propagation import Propagator, Semantics, _resize_planes, quantize_probs

log = logging.getLogger(__name__)

MODES = ('warp', 'iam-lowres', 'refiner', 'grfp', 'davss', 'cache1', 'cache2', 'region', 'region-ctx')
REGION_MODES = ('region', 'region-ctx')
# the modes whose forward output the delayed two-sided fusion (core/bidirectional.py) may take: plain warping
# and region refresh (measured together, BENCHMARKS.md 7.1)
TWO_SIDED_MODES = ('warp',) + REGION_MODES
LEARNED = ('refiner', 'grfp', 'davss')


def build_net(mode: str, config: dict | None = None):
    """Fresh network of a learned mode (``config``: constructor kwargs stored with the weights)."""
    cfg = dict(config or {})
    if mode == 'refiner':
        from .refiner import RefinerNet
        return RefinerNet(**cfg)
    if mode == 'grfp':
        from .grfp import STGRU
        return STGRU(**cfg)
    if mode == 'davss':
        from .davss import DAVSSNet
        return DAVSSNet(**cfg)
    raise ConfigError(f'mode {mode!r} has no learned network (learned: {", ".join(LEARNED)})')


def weights_path(mode: str) -> Path:
    return WEIGHTS_DIR / f'{mode}.pt'


def load_net(mode: str, weights=None, num_classes: int = 20):
    """Network of ``mode`` with ``weights`` (path) or the packaged ones; untrained if none exist."""
    path = Path(weights) if weights is not None else weights_path(mode)
    if not path.is_file():
        if weights is not None:
            raise ModelError(f'temporal weights {path} not found')
        log.warning('no trained weights for temporal mode %s (%s): using the untrained network '
                    '(= plain warping)', mode, path)
        return build_net(mode, {'num_classes': num_classes})
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f'cannot read temporal weights {path}: {type(e).__name__}') from None
    if not isinstance(ck, dict) or 'state_dict' not in ck or ck.get('mode') != mode:
        raise ModelError(f'temporal weights {path} are not {mode!r} weights '
                         f'(mode {ck.get("mode") if isinstance(ck, dict) else None!r})')
    net = build_net(mode, ck.get('config'))
    net.meta = dict(ck.get('meta') or {}, path=str(path))
    try:
        net.load_state_dict(ck['state_dict'], strict=True)
    except RuntimeError as e:
        raise ModelError(f'temporal weights {path} do not fit {mode}: {str(e).splitlines()[0][:160]}') \
            from None
    return net


def save_net(net, mode: str, path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({'mode': mode, 'config': net.config(), 'state_dict': sd, 'meta': meta or {}}, path)
    return path


def make_temporal_module(mode: str, model, weights=None, device: str = 'cpu', schedule=5,
                         cheap: str | None = None, cheap_factor: int | None = None, flow=None,
                         gate_classes: bool | None = None, tile_area: float | None = None,
                         tile_model: str | None = None, tile_shape: str | None = None,
                         catch_up: str | None = None):
    """Object implementing ``mode`` (see module docstring). ``model``: the keyframe KeyframeModel
    (its class planes; 'iam-lowres' runs it at 1/``cheap_factor`` (default 4) of its input size;
    caching splits it). GRFP/DAVSS run their own cheap network ``NAME@WxH``
    (``refiner.CheapPass``): the one recorded in their weights; ``cheap`` may name it and must then
    match it (ModelError otherwise); untrained networks use ``cheap`` or ``refiner.DEFAULT_CHEAP``.
    ``schedule``: keyframe interval / Schedule for the caching modes. ``gate_classes`` (GRFP only):
    switch the STGRU's class gate (``grfp.gate_to_state``) on/off regardless of what the weights
    say (None: as trained/packaged). ``tile_area`` / ``tile_shape`` / ``tile_model`` (region modes): the
    refreshed region's share of the frame, its shape ('strip' or 'tile') and the network run on it
    (defaults: ``region.RegionRefresher``'s), ``catch_up`` how a late keyframe is carried through buffered
    frames ('all' or 'newest', ``RegionRefresher``). 'region-ctx' is region refresh whose tile network gets the
    keyframe's global context (``region.ContextRegionRefresher``; ESPNetv2 keyframe networks)."""
    if gate_classes is not None and mode != 'grfp':
        raise ConfigError(f'gate_classes applies to mode grfp only, not {mode!r}')
    if (tile_area is not None or tile_model is not None or tile_shape is not None or catch_up is not None) \
            and mode not in REGION_MODES:
        raise ConfigError(f'tile_area / tile_shape / tile_model / catch_up apply to the region modes only, '
                          f'not {mode!r}')
    if mode == 'region-ctx' and tile_model is not None:
        raise ConfigError('region-ctx gives the tile the keyframe network\'s own context: it does not combine '
                          'with tile_model')
    if mode not in MODES:
        raise ConfigError(f'unknown temporal mode {mode!r} (known: {", ".join(MODES)})')
    k = int(getattr(model, 'num_outputs', 20))
    if mode == 'warp':
        return None
    if mode == 'iam-lowres':
        from .pipeline import make_low_res_refiner
        return make_low_res_refiner(model, cheap_factor or 4)
    if mode in REGION_MODES:
        from .region import ContextRegionRefresher, RegionRefresher
        cls = ContextRegionRefresher if mode == 'region-ctx' else RegionRefresher
        return cls(model, device=device, tile_model=tile_model,
                   **({} if tile_area is None else {'tile_area': tile_area}),
                   **({} if tile_shape is None else {'shape': tile_shape}),
                   **({} if catch_up is None else {'catch_up': catch_up}))
    if mode in ('cache1', 'cache2'):
        from .caching import FeatureCachingSegmenter
        return FeatureCachingSegmenter(model, levels=int(mode[-1]), schedule=schedule, flow=flow)
    net = load_net(mode, weights, k)
    if getattr(net, 'num_classes', k) != k:
        raise ModelError(f'{mode} weights have {net.num_classes} classes, model {model.name} has {k} outputs')
    if mode == 'refiner':
        from .refiner import EVSRefiner
        return EVSRefiner(net, device)
    cp = load_cheap_pass(mode, net, model, cheap, device)
    if mode == 'grfp':
        from .grfp import STGRURefiner
        if gate_classes is not None:
            net.gate_classes = bool(gate_classes)
        return STGRURefiner(net, cp, device)
    from .davss import DAVSSRefiner
    return DAVSSRefiner(net, cp, device)


def load_cheap_pass(mode: str, net, model, cheap: str | None = None, device: str = 'cpu'):
    """The CheapPass of a GRFP/DAVSS network: the cheap network its weights record
    (``meta['cheap']``); ModelError when ``cheap`` names another one, when trained weights record
    none, or when its output planes differ from the keyframe ``model``'s."""
    from .refiner import DEFAULT_CHEAP, CheapPass, cheap_matches, parse_cheap
    meta = getattr(net, 'meta', None)
    trained = (meta or {}).get('cheap')
    src = (meta or {}).get('path', 'the weights')
    if cheap is not None:
        parse_cheap(cheap)
    if meta is not None and trained is None:
        raise ModelError(f'{mode} weights {src} do not record their cheap network (trained before it was '
                         f'configurable): retrain with vidseg train temporal --mode {mode}')
    if trained is not None and cheap is not None and not cheap_matches(trained, cheap):
        raise ModelError(f'{mode} weights {src} were trained with the cheap network {trained}, not {cheap}: '
                         f'use {trained} or retrain (vidseg train temporal --mode {mode} --cheap {cheap})')
    cp = CheapPass.load(trained or cheap or DEFAULT_CHEAP, device)
    mine = np.asarray(getattr(model, 'output_to_class', ()), np.int64)
    theirs = np.asarray(getattr(cp.model, 'output_to_class', ()), np.int64)
    if cp.num_outputs != net.num_classes:
        raise ModelError(f'cheap network {cp.spec} has {cp.num_outputs} outputs, the {mode} network '
                         f'{net.num_classes}')
    if mine.size and not np.array_equal(mine, theirs):
        raise ModelError(f'cheap network {cp.spec} maps its outputs to other classes than the keyframe '
                         f'model {getattr(model, "name", "")}')
    return cp


class TemporalPropagator(Propagator):
    """Propagator running a temporal module with its own blend (see module docstring).

    Modules with a ``refine(image, warped, mask, prev_image=, flow_bwd=) -> (probs, region)``
    method are called on every propagated frame (given image and probabilities); their probs become
    the state (re-quantised) and labels are re-derived (argmax of the upsampled probs) where
    ``region`` > 0.5. Modules with a ``refresh(image, warped, mask, prev=) -> Semantics`` method
    (region refresh) return the new state themselves. Other refiners (e.g. LowResNetworkRefiner)
    behave as in the Propagator. A module that raises a VidsegError (bad input, a class-plane
    mismatch...) costs only its own contribution: the frame keeps the plain warp and
    ``stats['module_errors']`` / ``last_module_error`` record it (logged once per distinct error).
    """

    def _advance(self, sem, e):
        ref = self.refiner
        if ref is None or not (hasattr(ref, 'refine') or hasattr(ref, 'refresh')):
            return super()._advance(sem, e)
        self.refiner = None
        try:
            new, mask, frac, deg = super()._advance(sem, e)
        finally:
            self.refiner = ref
        # (_skip_iam: a late keyframe's catch-up through a frame before the newest, for a module that asks
        # for it with ``catch_up_newest_only``; _skip_refine: ``step`` / ``set_keyframe(refine=False)``, load
        # shedding: the plain warp)
        if self._skip_iam or self._skip_refine or not self.warp or e.flow_bwd is None or e.image is None \
                or new.probs is None:
            if new is not sem and new.age is None and sem.age is not None and sem.age.shape == new.labels.shape:
                # region refresh skipped: every pixel is one frame older (the age map stays positional, as
                # the module keeps it), so the next refresh and two-sided fusion see the real staleness
                new = replace(new, age=np.minimum(sem.age.astype(np.uint32) + 1, 65535).astype(np.uint16))
            return new, mask, frac, deg
        t0 = time.perf_counter()
        prev = self._hist.get(e.prev_id) if e.prev_id is not None else None
        prev_image = prev.image if prev is not None else None
        w, h = new.size
        image = e.image
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if prev_image is not None and prev_image.shape[:2] != (h, w):
            prev_image = cv2.resize(prev_image, (w, h), interpolation=cv2.INTER_AREA)
        try:
            if hasattr(ref, 'refresh'):   # region refresh: the whole new state (labels, probs, age)
                new = ref.refresh(image, new, mask, prev=sem, flow_bwd=e.flow_bwd)
            else:
                probs, region = ref.refine(image, new, mask, prev_image=prev_image, flow_bwd=e.flow_bwd)
                new = apply_refinement(new, probs, region)
        except VidsegError as err:
            # the frame keeps its plain warp (a valid state: what warp mode gives): a failing module
            # never stops the labels; counted, logged (once per distinct message)
            self.stats['module_errors'] = self.stats.get('module_errors', 0) + 1
            if str(err) != getattr(self, 'last_module_error', None):
                log.warning('temporal module failed on frame %s, plain warp used: %s', e.frame_id, err)
            self.last_module_error = str(err)
            return new, mask, frac, deg
        self.stats['refined_frames'] += 1
        self.last_timings['refine'] = time.perf_counter() - t0
        return new, mask, frac, deg


def apply_refinement(warped: Semantics, probs: np.ndarray, region: np.ndarray) -> Semantics:
    """New state: quantised ``probs``; labels are re-derived (argmax of the upsampled probs) where
    ``region`` > 0.5 and the module changed the argmax at the probability grid, so that the sharper
    working-resolution warped labels survive wherever the module agrees with them."""
    probs = np.asarray(probs, np.float32)
    if probs.shape != warped.probs.shape:
        raise ModelError(f'temporal module returned probs {probs.shape}, expected {warped.probs.shape}')
    w, h = warped.size
    labels = warped.labels.copy()
    changed = (np.argmax(probs, 0) != np.argmax(warped.probs, 0)).astype(np.uint8)
    changed = cv2.dilate(changed, np.ones((3, 3), np.uint8))
    sel = (cv2.resize(np.asarray(region, np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5) & \
        (cv2.resize(changed, (w, h), interpolation=cv2.INTER_NEAREST) > 0)
    if sel.any():
        up = _resize_planes(probs, (w, h), cv2.INTER_LINEAR)
        lab = warped.class_map[np.argmax(up, axis=0)]
        labels[sel] = lab[sel]
    return Semantics(labels, quantize_probs(probs), warped.class_map)


def make_propagator(mode: str, module, **kwargs) -> Propagator:
    """Propagator for a Propagator-compatible mode ('warp' -> no refiner)."""
    if mode in ('cache1', 'cache2'):
        raise ConfigError(f'mode {mode} is not a Propagator refiner: call its process(rgb)')
    return TemporalPropagator(refiner=module, **kwargs)


def attach_mode(segmenter, mode, model, **module_kw) -> None:
    """Attach propagation mode ``mode`` to a ``pipeline.VideoSegmenter`` as ``vidseg run`` and the ROS
    graph run it: the caching modes warp the keyframe's cached maps with the state
    (``caching.CachedFeatureRefresher``; ``module_kw`` does not apply to them), the others get
    ``make_temporal_module(mode, model, **module_kw)``; None / '' / 'warp' attach nothing."""
    if not mode or mode == 'warp':
        return
    if mode in ('cache1', 'cache2'):
        from .caching import CachedFeatureRefresher
        attach(segmenter, CachedFeatureRefresher(model, levels=int(mode[-1])))
    else:
        attach(segmenter, make_temporal_module(mode, model, **module_kw))


def attach(segmenter, module) -> None:
    """Install ``module`` (a refiner-type temporal module, or the graph's feature caching
    ``caching.CachedFeatureRefresher``, which also takes over the keyframe network call) in a
    ``pipeline.VideoSegmenter``: replaces its Propagator by a TemporalPropagator with the same settings."""
    p = segmenter.propagator
    segmenter.refiner = module
    if hasattr(module, 'keyframe_semantics'):   # feature caching: keyframes carry the network's cached maps
        from .errors import InputError
        from .pipeline import working_size

        def keyframe_fn(idx, rgb):
            try:
                sem, bad = module.keyframe_semantics(rgb, working_size((rgb.shape[1], rgb.shape[0]),
                                                                       segmenter.op.scale))
            except InputError as exc:   # mostly non-finite network output: rejected, as in the pipeline
                segmenter.rejected_keyframes += 1
                log.warning('frame %d: keyframe rejected (%s); propagating the previous semantics', idx, exc)
                return None
            segmenter.nonfinite_pixels += bad
            return sem
        segmenter.keyframe_fn = keyframe_fn
    segmenter.propagator = TemporalPropagator(
        warp=p.warp, refiner=module, use_iam=p.use_iam, history=p.history,
        confidence_decay=p.confidence_decay, max_distance=p.max_distance, iam_params=p.iam_params,
        size_wh=p.size_wh, fill_holes=p.fill_holes)
