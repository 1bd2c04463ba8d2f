"""IAM-guided region refresh: on a propagated frame, run the keyframe network on ONE tile of the
current frame -- the tile where the warped labels are most likely wrong -- and paste its labels there.

Not one of the four seed modules of issue 4: it combines the EVS idea of spending computation only
where the inconsistency attention mask (IAM) flags the warp, with the region-level keyframe decision
of DVSNet (Xu et al., CVPR 2018: a frame is cut into regions and each region either goes through the
segmentation network or is propagated by flow). Nothing is learned: the same keyframe network and
weights run on a crop at the keyframe's pixel scale, so no training data is needed (every learned
module of this project is limited by its ~90 training frames, see weights/TEMPORAL.md).

Per propagated frame (working resolution W x H, tile T = ``tile_area`` of the frame: by default a
full-height strip, or a 2:1 tile with ``shape='tile'``; its network input a multiple of 16)::

    age   += 1                                        # frames since each pixel was last segmented
    need   = age * (1 + iam_weight * M) + new_weight * [entered the view (backward flow leaves the
             previous frame) or warped label unknown]
    tile   = argmax over tile positions (stride 16) of sum(need inside the tile)   # integral image
    P_tile = keyframe network on the crop (resized to the network's pixel scale)
    paste  = core of the tile (``margin`` px off every side inside the frame: a crop's border has
             too little context) where  max P_tile > conf  or  M > 0.5  or  the pixel entered the view
    labels[paste] = argmax P_tile ;  probs[paste] = P_tile ;  age[paste] = 0

The age map travels with the state (``Semantics.age``; None = a keyframe, all fresh), so a late
keyframe re-propagated through buffered frames gives the same result as in-order processing.
Its cost is the network on ~``tile_area`` of the pixels (ESPNetv2's cost on this CPU scales with the
pixels) plus the tile search; ``vidseg bench-temporal --modes region`` measures it.

Measured (BENCHMARKS.md sections 4 and 7.1): on the Cityscapes snippets it wins back about a third of
the S=5 warping drop at ~0.22 keyframe, but those frames are also where its knobs were set; on the
held-out highway clips it wins nothing. The 2:1 tile (the shape until session 10) even lost a little
there; the full-height strip, the default since, does not, and recovers more at S=2 and at larger
areas (section 7.1). The network on a crop lacks the
context it has on the whole frame and disagrees with its full-frame labels on ~5 % of the pixels,
about as much as one warp step.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .errors import ConfigError, InputError
from .models.espnetv2 import CONTEXT_KEYS, EPP_PROJ, context_grid_shape
from .propagation import IGNORE, Semantics, _resize_planes, quantize_probs

__all__ = ['RegionRefresher', 'ContextRegionRefresher', 'KeyframeContext', 'SHAPES', 'tile_size', 'best_tile',
           'entered_view', 'context_maps']

STRIDE = 16
CONTEXT_STRIDES = (16, 8, 4, 2)   # the resolution of the decoder EPPs that CONTEXT_KEYS name, as input / stride


SHAPES = ('strip', 'tile')


def tile_size(input_wh, area: float, shape: str = 'strip') -> tuple:
    """Network input size (w, h) of the refreshed region covering ~``area`` of a ``input_wh`` frame,
    in multiples of 16. ``shape`` 'strip' (the default): a full-height vertical strip (at least 16 px
    wide), which keeps the whole vertical context of what it refreshes (sky, building, pole, sidewalk,
    road); 'tile': a 2:1 tile (at least 32x16), the shape of sessions 4-9."""
    if not 0.0 < float(area) <= 1.0:
        raise ConfigError(f'tile_area must be in (0, 1], got {area}')
    if shape not in SHAPES:
        raise ConfigError(f"region shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    w, h = int(input_wh[0]), int(input_wh[1])
    if shape == 'strip':
        tw = int(min(max(16, round(area * w / 16) * 16), w // 16 * 16 or 16))
        return tw, h // 16 * 16 or 16
    th = math.sqrt(area * w * h / 2.0)
    th = int(min(max(16, round(th / 16) * 16), h // 16 * 16 or 16))
    tw = int(min(max(32, 2 * th), w // 16 * 16 or 16))
    return tw, th


def best_tile(need: np.ndarray, tw: int, th: int, stride: int = STRIDE) -> tuple:
    """(x, y) of the tw x th window (positions on a ``stride`` grid, plus the far edges) with the
    largest sum of ``need``."""
    h, w = need.shape
    tw, th = min(tw, w), min(th, h)
    ii = cv2.integral(np.asarray(need, np.float32), sdepth=cv2.CV_64F)
    xs = np.unique(np.r_[np.arange(0, w - tw + 1, stride), w - tw])
    ys = np.unique(np.r_[np.arange(0, h - th + 1, stride), h - th])
    y0, x0 = ys[:, None], xs[None, :]
    s = ii[y0 + th, x0 + tw] - ii[y0, x0 + tw] - ii[y0 + th, x0] + ii[y0, x0]
    iy, ix = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(xs[ix]), int(ys[iy])


def entered_view(flow_bwd: np.ndarray, size_wh) -> np.ndarray:
    """Pixels (bool, at ``size_wh``) whose backward flow points outside the previous frame: content
    that entered the view, which no warp can know."""
    f = np.asarray(flow_bwd, np.float32)
    fh, fw = f.shape[:2]
    xs = np.arange(fw, dtype=np.float32)[None, :] + f[..., 0]
    ys = np.arange(fh, dtype=np.float32)[:, None] + f[..., 1]
    out = ((xs < -0.5) | (xs > fw - 0.5) | (ys < -0.5) | (ys > fh - 0.5)).astype(np.uint8)
    w, h = int(size_wh[0]), int(size_wh[1])
    if (fw, fh) != (w, h):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


class RegionRefresher:
    """The region-refresh module (see module docstring) for a keyframe ``model`` (a KeyframeModel).

    ``tile_area`` (fraction of the frame), ``shape`` ('strip' or 'tile', see :func:`tile_size`),
    ``margin`` (px of the network input dropped on a tile side inside the frame), ``conf`` (paste where
    the tile network is at least this sure), ``iam_weight``, ``new_weight``: the tile choice. The tile
    network is the keyframe network's config and weights
    loaded at the tile's input size on the same backend, so the keyframe network must accept that
    size (the native ESPNetv2/ESPNet models do; an ONNX file with a fixed input shape is refused
    by ``models.load_model`` with a ModelError naming both sizes). ``tile_model`` (a model spec)
    puts another network with the same class planes on the tile instead, e.g. a cheaper one trained
    at the same pixel scale (BENCHMARKS.md section 7.1 measures what that buys, and what it does not).
    ``catch_up``: how a late keyframe (the ROS graph's live mode) is carried through the frames buffered
    since: 'all' (default) refreshes each of them, so the state equals in-order processing; 'newest'
    refreshes only the newest and warps through the others (those were published already), saving a
    network pass per buffered frame (BENCHMARKS.md section 9).
    """

    CATCH_UPS = ('all', 'newest')

    @property
    def catch_up_newest_only(self) -> bool:
        """Read by ``Propagator.set_keyframe``: carry a late keyframe with this module on the newest frame only."""
        return self.catch_up == 'newest'

    def __init__(self, model, tile_area: float = 0.19, margin: int = 8, conf: float = 0.7,
                 iam_weight: float = 4.0, new_weight: float = 20.0, device: str = 'cpu', backend=None,
                 tile_model=None, shape: str = 'strip', catch_up: str = 'all'):
        from .models import load_model
        cfg = getattr(model, 'config', None)
        if cfg is None:
            raise ConfigError('region refresh needs a keyframe model loaded by models.load_model')
        if tile_model is not None:   # another network on the tile (same class planes, same pixel scale)
            cfg = load_model(tile_model, device=device).config
        if not 0.0 <= float(conf) <= 1.0:
            raise ConfigError(f'region conf must be in [0, 1], got {conf}')
        if int(margin) < 0:
            raise ConfigError(f'region margin must be >= 0, got {margin}')
        if catch_up not in self.CATCH_UPS:
            raise ConfigError(f"region catch_up must be one of {', '.join(self.CATCH_UPS)}, got {catch_up!r}")
        self.catch_up = catch_up
        self.input_size = tuple(int(v) for v in model.input_size)
        self.tile = tile_size(self.input_size, tile_area, shape)
        self.tile_area, self.shape = float(tile_area), shape
        self.margin, self.conf = int(margin), float(conf)
        self.iam_weight, self.new_weight = float(iam_weight), float(new_weight)
        backend = backend or getattr(model, 'backend', 'auto')
        if backend not in ('torch', 'torchscript', 'onnxruntime'):
            backend = 'auto'
        self.net = load_model(cfg, device=device, backend=backend, input_size=self.tile)
        self.output_to_class = np.asarray(model.output_to_class)
        if not np.array_equal(np.asarray(self.net.output_to_class), self.output_to_class):
            raise ConfigError(f'region refresh: the tile network {self.net.name} has other class planes than the '
                              f'keyframe network {getattr(model, "name", "")}')
        self.last = None   # (x, y, w, h) of the last tile at working resolution, pasted fraction

    def refresh(self, image: np.ndarray, warped: Semantics, mask, prev: Semantics | None = None,
                flow_bwd: np.ndarray | None = None) -> Semantics:
        """New state for the current frame from the ``warped`` state (``prev``: the state before the
        warp, whose ``age`` is carried on; None or age None = fresh keyframe). ``flow_bwd`` (current
        -> previous frame, any resolution) marks the pixels that entered the view (their flow leaves
        the previous frame); without it, the warped labels that are unknown (255)."""
        if image is None:
            raise InputError('region refresh needs the current image')
        w, h = warped.size
        mine = np.asarray(self.output_to_class, np.uint8)
        if warped.class_map is not None and not np.array_equal(np.asarray(warped.class_map, np.uint8), mine):
            raise ConfigError(f'region refresh: the tile network ({self.net.name}) has other class planes '
                              f'({mine.size}) than the keyframe semantics ({np.asarray(warped.class_map).size}): '
                              'give the propagation node the keyframe node\'s model')
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        age_prev = None if prev is None else prev.age
        age = np.zeros((h, w), np.float32) if age_prev is None or age_prev.shape != (h, w) \
            else age_prev.astype(np.float32)
        age += 1.0
        unknown = warped.labels == IGNORE
        if flow_bwd is not None:
            unknown |= entered_view(flow_bwd, (w, h))
        m = np.zeros((h, w), np.float32) if mask is None else np.asarray(mask, np.float32)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        need = age * (1.0 + self.iam_weight * m)
        need[unknown] += self.new_weight
        # the tile at working resolution: the network's tile at the keyframe network's pixel scale
        sx, sy = w / self.input_size[0], h / self.input_size[1]
        cw = min(w, max(1, int(round(self.tile[0] * sx))))
        ch = min(h, max(1, int(round(self.tile[1] * sy))))
        x, y = best_tile(need, cw, ch, max(1, int(round(STRIDE * sx))))
        crop = np.ascontiguousarray(image[y:y + ch, x:x + cw])
        seg = self._segment(crop, (int(round(x / sx)), int(round(y / sy))), warped)
        probs = np.asarray(seg.probs, np.float32)
        if probs.shape[1:] != (ch, cw):
            probs = _resize_planes(probs, (cw, ch), cv2.INTER_LINEAR)
        lab = self.output_to_class[np.argmax(probs, axis=0)].astype(np.uint8)
        mx, my = int(round(self.margin * sx)), int(round(self.margin * sy))
        x0, y0 = x + (mx if x > 0 else 0), y + (my if y > 0 else 0)
        x1, y1 = x + cw - (mx if x + cw < w else 0), y + ch - (my if y + ch < h else 0)
        core = (slice(y0, y1), slice(x0, x1))
        inner = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
        sel = (probs.max(axis=0)[inner] > self.conf) | (m[core] > 0.5) | unknown[core]
        labels = warped.labels.copy()
        labels[core][sel] = lab[inner][sel]
        age[core][sel] = 0.0
        new_probs = warped.probs
        if warped.probs is not None:
            new_probs = self._paste_probs(warped, probs, sel, (x0, y0, x1, y1), (x, y))
        self.last = ((x, y, cw, ch), float(sel.mean()))
        return Semantics(labels, new_probs, warped.class_map, np.minimum(age, 65535).astype(np.uint16),
                         features=warped.features)

    def _segment(self, crop: np.ndarray, origin_net, warped: Semantics):
        """The tile network on ``crop`` (its top-left corner at ``origin_net`` in network pixels)."""
        return self.net.segment(crop)

    def __call__(self, image, warped: Semantics, mask) -> np.ndarray:
        """Plain ``Propagator`` refiner interface: the refreshed probabilities (float). The age map is
        not carried there (every frame counts as the first after a keyframe): use the
        ``temporal.TemporalPropagator``, which calls :meth:`refresh`."""
        from .propagation import dequantize_probs
        return dequantize_probs(self.refresh(image, warped, mask).probs)

    def _paste_probs(self, warped, probs, sel, box, origin):
        """The tile network's probabilities into the probability grid cells whose centre was pasted."""
        K, hp, wp = warped.probs.shape
        if probs.shape[0] != K:
            raise ConfigError(f'tile network has {probs.shape[0]} outputs, the semantics {K} planes')
        w, h = warped.size
        fx, fy = wp / w, hp / h
        x0, y0, x1, y1 = box
        px0, py0 = int(math.ceil(x0 * fx)), int(math.ceil(y0 * fy))
        px1, py1 = int(math.floor(x1 * fx)), int(math.floor(y1 * fy))
        out = warped.probs.copy()
        if px1 <= px0 or py1 <= py0:
            return out
        gw, gh = px1 - px0, py1 - py0
        ox, oy = origin
        # the tile's probabilities over the covered grid cells (area average of its pixels)
        bx0, by0 = int(round(px0 / fx)) - ox, int(round(py0 / fy)) - oy
        bx1, by1 = int(round(px1 / fx)) - ox, int(round(py1 / fy)) - oy
        sub = _resize_planes(probs[:, by0:by1, bx0:bx1], (gw, gh), cv2.INTER_AREA)
        selg = cv2.resize(sel[by0 - (y0 - oy):by1 - (y0 - oy), bx0 - (x0 - ox):bx1 - (x0 - ox)]
                          .astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA) > 0.5
        region = out[:, py0:py1, px0:px1]
        region[:, selg] = quantize_probs(sub)[:, selg]
        return out


# ------------------------------------------------------------------------------ region refresh with context
class _FullWithContext(torch.nn.Module):
    """The whole network -> (logits, its decoder EPPs' global-branch grids): a keyframe's pass (ONNX export)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits, grids = self.net.forward_high(self.net.forward_low(x), return_context=True)
        return (logits,) + tuple(grids[k] for k in CONTEXT_KEYS)


class _TileWithContext(torch.nn.Module):
    """The network on a crop, its EPPs' global branches replaced by the given maps (ONNX export)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, *maps):
        return self.net.forward_high(self.net.forward_low(x), context=dict(zip(CONTEXT_KEYS, maps)))


def _ac_taps(n_out: int, n_in: int, start: int, count: int) -> tuple:
    """Source indices (i0, i1) and weights of i1 for output rows ``start..start+count-1`` of a bilinear,
    align_corners resize of ``n_in`` rows to ``n_out`` (``torch.nn.functional.interpolate(...,
    align_corners=True)``)."""
    pos = np.arange(start, start + count, dtype=np.float64) * (n_in - 1) / max(n_out - 1, 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)


def context_maps(grids: dict, full_wh, box_net) -> dict:
    """The maps a crop's EPPs get: each keyframe grid resized (bilinear, align_corners, as the EPP does) to
    its EPP's size on the whole ``full_wh`` frame, cut to the crop ``box_net`` = (x, y, w, h) in network
    pixels (multiples of 16, as the tile positions are). Only the crop's rows and columns are computed,
    by gathers and blends: no BLAS call, whose idle threads would slow the network pass that follows
    (measured: the tile's onnxruntime pass took 2x as long right after a threaded ``np.matmul``)."""
    W, H = full_wh
    x, y, w, h = box_net
    out = {}
    for k, stride in zip(CONTEXT_KEYS, CONTEXT_STRIDES):
        g = np.asarray(grids[k], np.float32)
        c0, c1, cf = _ac_taps(W // stride, g.shape[2], x // stride, w // stride)
        r0, r1, rf = _ac_taps(H // stride, g.shape[1], y // stride, h // stride)
        cols = g[:, :, c0] * (1.0 - cf) + g[:, :, c1] * cf                         # (C, gh, w)
        m = cols[:, r0, :] * (1.0 - rf)[:, None] + cols[:, r1, :] * rf[:, None]    # (C, h, w)
        out[k] = torch.from_numpy(np.ascontiguousarray(m, np.float32)[None])
    return out


class KeyframeContext:
    """The keyframe network's pass that also returns its decoder EPPs' global-branch grids (ESPNetv2).

    ``keyframe_semantics(rgb, working_size)`` -> (Semantics with the grids as ``features`` {'ctx1'..'ctx4':
    (C, gh, gw) float32}, non-finite pixel count): the same labels and probabilities as the keyframe
    network. On onnxruntime (the model's backend, on the CPU) it runs an exported graph with the extra
    outputs (verified against torch; same cost as the plain network). The ROS keyframe node uses it
    with ``region_context`` (temporal_mode region-ctx)."""

    def __init__(self, model):
        from .caching import split_network
        from .errors import ModelError
        self.model = model
        try:
            self.net = split_network(model)   # the torch ESPNetv2
        except ModelError:
            raise ConfigError('region refresh with context (region-ctx) needs an ESPNetv2 keyframe network with '
                              f'a torch network (got {getattr(model, "name", model)}); use temporal mode region') \
                from None
        self.device = torch.device(getattr(model, 'device', 'cpu'))
        self.class_map = np.asarray(model.output_to_class, np.uint8)
        self.full = _FullWithContext(self.net).eval()
        self.ort = None
        if getattr(model, 'backend', '') == 'onnxruntime' and self.device.type == 'cpu':
            from .models.backends import OrtRunner, export_onnx_module, synthetic_image
            W, H = model.input_size
            x = torch.from_numpy(model.preprocess(synthetic_image((W, H))))
            self.ort = OrtRunner(export_onnx_module(self.full, {'input': x}, ('logits',) + CONTEXT_KEYS,
                                                    f'{context_key(self.net, (W, H))}_keyframe',
                                                    f'{model.name} (keyframe with context grids)'))

    def keyframe_semantics(self, rgb: np.ndarray, working_size_wh):
        from .caching import network_input, semantics_from_logits
        x = network_input(self.model, rgb, self.device)
        if self.ort is not None:
            out = self.ort.run({'input': x.cpu().numpy()})
            logits, grids = torch.from_numpy(out[0]), out[1:]
        else:
            with torch.inference_mode():
                logits, *g = self.full(x)
            grids = [t.float().cpu().numpy() for t in g]
        sem, bad = semantics_from_logits(logits, self.class_map, working_size_wh)
        sem.features = {k: np.ascontiguousarray(g[0], np.float32) for k, g in zip(CONTEXT_KEYS, grids)}
        return sem, bad


def context_key(net, size_wh) -> str:
    from .models.backends import state_hash
    return f'regionctx_{state_hash(net)[:16]}_{size_wh[0]}x{size_wh[1]}'


def _grid_ok(g) -> bool:
    """A context grid as the keyframe pass makes it: (EPP_PROJ, gh, gw) float, finite."""
    g = None if g is None else np.asarray(g)
    return g is not None and g.ndim == 3 and g.shape[0] == EPP_PROJ and min(g.shape[1:]) >= 1 \
        and g.dtype.kind == 'f' and bool(np.isfinite(g).all())


class ContextRegionRefresher(RegionRefresher):
    """Region refresh whose tile network is given the keyframe's global context (ESPNetv2 only).

    A crop loses what the network sees of the rest of the frame. One part of that is the global branch of
    each decoder EPP (its input pooled to a ~5x5 grid over the whole frame, ``espnetv2.CONTEXT_SCALE``):
    on a crop it pools the crop. Here the keyframe pass returns those grids (``keyframe_semantics``,
    :class:`KeyframeContext`: the keyframe network's labels and probabilities, plus the grids as
    ``Semantics.features``, which the Propagator warps with the state like any feature map), and the tile
    network uses the keyframe's grids, resized to the whole frame and cut to the tile (``context_maps``),
    instead of its own. Same cost as the plain tile (the grids are tiny). When the keyframe brought no
    grids, or broken ones (a wrong shape, non-finite values), the tile runs plain, counted in
    ``context_missing``. BENCHMARKS.md section 7.1 measures it.
    """

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.keyframe = KeyframeContext(model)
        self.part = _TileWithContext(self.keyframe.net).eval()
        self.context_used = self.context_missing = 0
        self.ort = None
        if getattr(self.net, 'backend', '') == 'onnxruntime' and self.keyframe.device.type == 'cpu':
            from .models.backends import OrtRunner, export_onnx_module, synthetic_image
            W, H = self.input_size
            tw, th = self.tile
            grids = {k: np.zeros((EPP_PROJ,) + context_grid_shape(H // st, W // st), np.float32)
                     for k, st in zip(CONTEXT_KEYS, CONTEXT_STRIDES)}   # (the export's example input)
            maps = context_maps(grids, (W, H), (0, 0, tw, th))
            xt = torch.from_numpy(self.net.preprocess(synthetic_image((tw, th))))
            self.ort = OrtRunner(export_onnx_module(self.part, dict({'input': xt}, **maps), ('logits',),
                                                   f'{context_key(self.keyframe.net, (W, H))}_tile{tw}x{th}',
                                                   f'{model.name} (tile with context)'))

    def keyframe_semantics(self, rgb: np.ndarray, working_size_wh):
        """The keyframe network's semantics with its context grids (:class:`KeyframeContext`)."""
        return self.keyframe.keyframe_semantics(rgb, working_size_wh)

    def _segment(self, crop, origin_net, warped):
        from .models.base import segmentation_from_logits
        grids = warped.features or {}
        if not all(_grid_ok(grids.get(k)) for k in CONTEXT_KEYS):   # none came, or broken ones: the plain tile
            self.context_missing += 1
            return self.net.segment(crop)
        tw, th = self.tile
        maps = context_maps(grids, self.input_size, (origin_net[0], origin_net[1], tw, th))
        x = self.net.preprocess(crop)
        if self.ort is not None:
            logits = torch.from_numpy(self.ort.run(dict({'input': x}, **{k: m.numpy() for k, m in maps.items()}))[0])
        else:
            dev = self.keyframe.device
            with torch.inference_mode():
                logits = self.part(torch.from_numpy(x).to(dev), *[maps[k].to(dev) for k in CONTEXT_KEYS]).float().cpu()
        self.context_used += 1
        return segmentation_from_logits(logits[0], self.output_to_class)
