"""KeyframeModel base class, Segmentation result and the configurable preprocessing."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..classes import get_class_set
from ..errors import InputError
from .config import ModelConfig


@dataclass
class Segmentation:
    """Network-resolution result: ``probs`` (K, h, w) float32 softmax, ``labels`` (h, w) uint8."""

    probs: np.ndarray
    labels: np.ndarray


def sanitize_segmentation(seg: Segmentation, max_bad_fraction: float = 0.5):
    """Guard against NaN/Inf network outputs: returns (segmentation, number of bad pixels).

    Pixels where any probability plane is not finite get probability 0 on every plane and label 255
    (void: zero confidence, never propagated as a class). More than ``max_bad_fraction`` bad pixels
    raises InputError (the caller rejects the keyframe and keeps its previous semantics).
    """
    probs = np.asarray(seg.probs)
    finite = np.isfinite(probs)
    if finite.all():
        return seg, 0
    bad = ~finite.all(axis=0)
    n = int(bad.sum())
    if n > max_bad_fraction * bad.size:
        raise InputError(f'network output has non-finite values at {n / bad.size:.1%} of the pixels')
    probs = np.where(finite, probs, 0.0).astype(np.float32)
    probs[:, bad] = 0.0
    labels = np.array(seg.labels, dtype=np.uint8, copy=True)
    if labels.shape == bad.shape:
        labels[bad] = 255
    else:  # labels at another resolution than the probabilities: map the bad mask onto them
        import cv2
        m = cv2.resize(bad.astype(np.uint8), labels.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        labels[m] = 255
    return type(seg)(probs=probs, labels=labels), n


def check_image(rgb) -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) image (raises InputError)."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f'expected an RGB uint8 numpy image (H, W, 3), got {type(rgb).__name__}')
    if rgb.dtype != np.uint8:
        raise InputError(f'expected an RGB uint8 image, got dtype {rgb.dtype}')
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError(f'expected an RGB image of shape (H, W, 3), got shape {rgb.shape}')
    return rgb


class Preprocessor:
    """Image (RGB uint8) -> network input (1, 3, H, W) float32, exactly as the config says."""

    def __init__(self, cfg: ModelConfig):
        self.size = tuple(cfg.input_size)
        self.before_resize = cfg.normalise_before_resize
        # source RGB channel for each network channel
        self.src = (0, 1, 2) if cfg.channel_order == 'RGB' else (2, 1, 0)
        v = np.arange(256, dtype=np.float32)
        mean = np.asarray(cfg.mean, np.float32)
        std = np.asarray(cfg.std, np.float32)
        scale = np.float32(cfg.scale)
        self.post_scale = None
        if cfg.scale_before_normalise:
            luts = [(v / scale - mean[c]) / std[c] for c in range(3)]
        else:
            luts = [(v - mean[c]) / std[c] for c in range(3)]
            if self.before_resize:
                self.post_scale = scale      # divide after the float resize
            else:
                luts = [lut / scale for lut in luts]
        self.luts = [np.ascontiguousarray(lut, np.float32) for lut in luts]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        check_image(rgb)
        w, h = self.size
        out = np.empty((1, 3, h, w), np.float32)
        if not self.before_resize:
            img = rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h),
                                                                interpolation=cv2.INTER_LINEAR)
            for c, s in enumerate(self.src):
                np.take(self.luts[c], img[:, :, s], out=out[0, c])
            return out
        ih, iw = rgb.shape[:2]
        full = np.empty((ih, iw, 3), np.float32)
        for c, s in enumerate(self.src):
            full[:, :, c] = np.take(self.luts[c], rgb[:, :, s])
        if (ih, iw) != (h, w):
            full = cv2.resize(full, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.post_scale is not None:
            full /= self.post_scale
        out[0] = full.transpose(2, 0, 1)
        return out


def argmax_channels(t: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over dim 0 of (K, h, w) (first maximum wins, like torch.argmax); a loop over
    the K planes is ~3x faster on the CPU than ``t.argmax(0)``, which reduces a strided dim."""
    with torch.inference_mode():
        best = t[0].clone()
        idx = torch.zeros(t.shape[1:], dtype=torch.uint8, device=t.device)
        for c in range(1, t.shape[0]):
            idx.masked_fill_(t[c] > best, c)
            torch.maximum(best, t[c], out=best)
        return idx


def segmentation_from_logits(t: torch.Tensor, output_to_class) -> Segmentation:
    """(K, h, w) CPU logits -> softmax probabilities and class-id labels (``output_to_class[argmax]``)."""
    with torch.inference_mode():
        idx = argmax_channels(t).numpy()
        probs = torch.softmax(t, 0).numpy()
    return Segmentation(probs=probs, labels=np.asarray(output_to_class)[idx])


class KeyframeModel:
    """Abstract keyframe network: subclasses implement ``_infer`` (and optionally ``features``)."""

    backend = 'none'
    device = 'cpu'

    def __init__(self, config: ModelConfig):
        self.config = config
        self.class_set = get_class_set(config.class_set)
        self.num_outputs = config.num_outputs
        self.output_to_class = np.asarray(config.output_to_class, np.uint8)
        self._pre = Preprocessor(config)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def input_size(self) -> tuple:
        """Network input (W, H); outputs have this size."""
        return tuple(self.config.input_size)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> (1, 3, h, w) float32 network input."""
        return self._pre(rgb)

    def _infer(self, x: np.ndarray) -> torch.Tensor:
        """(1, 3, h, w) float32 input -> (1, K, h, w) float32 CPU tensor of logits."""
        raise NotImplementedError

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """Raw logits (num_outputs, h, w) float32 at network resolution."""
        return self._infer(self.preprocess(rgb))[0].numpy()

    def segment(self, rgb: np.ndarray) -> Segmentation:
        """Softmax probabilities and class-id labels (via output_to_class) at network resolution."""
        return segmentation_from_logits(self._infer(self.preprocess(rgb))[0], self.output_to_class)

    def labels_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """Class ids (uint8) of the argmax channel."""
        return self.output_to_class[np.asarray(logits).argmax(0)]

    def features(self, rgb: np.ndarray) -> dict:
        """Named intermediate maps (torch tensors); the base gives only 'logits'."""
        return {'logits': self._infer(self.preprocess(rgb))}

    def __repr__(self):
        return (f'{type(self).__name__}({self.name!r}, arch={self.config.arch}, '
                f'input_size={self.input_size}, backend={self.backend}, device={self.device})')
