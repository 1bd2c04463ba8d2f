"""EVS Refiner (Paul et al., "Efficient Video Semantic Segmentation with Labels Propagation and
Refinement") + the IAM blend of EVS eq. 4, and helpers shared by the learned temporal modules.

The refiner is a few 3x3 convolutions at the probability grid (1/4 of the working resolution,
see :mod:`.propagation`) over [image features (one stride-2 conv on the half-resolution image),
log of the warped keyframe probabilities, IAM mask]. Its last conv is zero-initialised and its
output is a residual on the warped log-probabilities, so an untrained refiner reproduces plain
warping. The refined probabilities are blended with the warped ones through the IAM mask M
(eq. 4: ``P = M * P_ref + (1 - M) * P_warp``); training goes through the same blend.

Module protocol (shared by :class:`EVSRefiner`, ``grfp.STGRURefiner`` and ``davss.DAVSSRefiner``):

* ``refine(image, warped, mask, prev_image=None, flow_bwd=None) -> (probs, region)``: ``image`` RGB
  uint8 at working resolution, ``warped`` the propagated :class:`Semantics`, ``mask`` the IAM at
  working resolution (or None); returns the final float32 probabilities (K, hp, wp) on the grid of
  ``warped.probs`` and a region map (hp, wp) in [0, 1] where labels should be re-derived from them;
* ``__call__(image, warped, mask)``: the :data:`~.propagation.Refiner` interface of the plain
  Propagator (returns P_ref; the Propagator blends with the IAM itself).
"""
from __future__ import annotations

import re

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, InputError, ModelError

EPS = 1e-3
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------- helpers
def norm_image(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) uint8 or float in [0, 255] RGB -> ImageNet-normalised float."""
    x = img.float() / 255.0
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def log_probs(p: torch.Tensor) -> torch.Tensor:
    """log of (possibly quantised) probabilities, clamped at EPS so that 0 stays finite."""
    return torch.log(p.clamp_min(EPS))


def resize_image(img: np.ndarray, size_wh) -> np.ndarray:
    w, h = int(size_wh[0]), int(size_wh[1])
    if img.shape[1::-1] == (w, h):
        return img
    interp = cv2.INTER_AREA if img.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def image_tensor(img: np.ndarray, size_wh, device='cpu') -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, h, w) float tensor in [0, 255] at ``size_wh``."""
    im = resize_image(np.ascontiguousarray(img), size_wh)
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float()[None].to(device)


def probs_tensor(q: np.ndarray, device='cpu') -> torch.Tensor:
    """uint8-quantised or float (K, h, w) probabilities -> (1, K, h, w) float tensor."""
    q = np.asarray(q)
    p = q.astype(np.float32) * (1.0 / 255.0) if q.dtype == np.uint8 else q.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(p))[None].to(device)


def mask_tensor(mask, size_wh, device='cpu') -> torch.Tensor:
    """IAM (h, w) at any size (None -> zeros) -> (1, 1, hp, wp) float tensor, area-resized."""
    w, h = int(size_wh[0]), int(size_wh[1])
    if mask is None:
        return torch.zeros(1, 1, h, w, device=device)
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(m))[None, None].to(device)


def check_warped(warped, num_classes: int | None = None, image=(), what: str = 'temporal module') -> tuple:
    """(K, hp, wp) of a warped Semantics. Raises InputError without probabilities or, when ``image``
    is passed, when it is None; ModelError when K differs from ``num_classes``."""
    if warped is None or getattr(warped, 'probs', None) is None:
        raise InputError(f'{what} needs warped semantics with probabilities (Semantics.probs)')
    k, hp, wp = warped.probs.shape
    if num_classes is not None and k != num_classes:
        raise ModelError(f'{what} has {num_classes} classes, semantics have {k} planes')
    if image is None:
        raise InputError(f'{what} needs the current image')
    return k, hp, wp


def blend_torch(mask: torch.Tensor, p_ref: torch.Tensor, p_warp: torch.Tensor) -> torch.Tensor:
    """EVS eq. 4 on tensors: ``M * P_ref + (1 - M) * P_warp`` (mask (B, 1, h, w))."""
    return mask * p_ref + (1.0 - mask) * p_warp


def soft_ce(p: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of probabilities ``p`` against soft targets (B, K, h, w); optional pixel weight."""
    ce = -(target * torch.log(p.clamp_min(1e-6))).sum(1, keepdim=True)
    if weight is None:
        return ce.mean()
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def conv(cin, cout, k=3, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation)


class ImageStem(nn.Module):
    """Image at twice the probability grid -> ``c`` feature planes at the grid (one stride-2 conv)."""

    def __init__(self, c=16):
        super().__init__()
        self.conv = conv(3, c, 3, stride=2)

    def forward(self, img_half: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(norm_image(img_half)))


def upsample_region(region: np.ndarray, size_wh) -> np.ndarray:
    return cv2.resize(np.asarray(region, np.float32), (int(size_wh[0]), int(size_wh[1])),
                      interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------- network
class RefinerNet(nn.Module):
    """EVS refiner: P_ref = softmax(log P_warp + f([stem(I), log P_warp, M]))."""

    def __init__(self, num_classes=20, width=32, stem=16):
        super().__init__()
        self.num_classes, self.width, self.stem_c = num_classes, width, stem
        self.stem = ImageStem(stem)
        self.body = nn.Sequential(conv(stem + num_classes + 1, width), nn.ReLU(inplace=True),
                                  conv(width, width, dilation=2), nn.ReLU(inplace=True),
                                  conv(width, width), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(width, num_classes, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict:
        return {'num_classes': self.num_classes, 'width': self.width, 'stem': self.stem_c}

    def forward(self, img_half, p_warp, mask):
        """img_half (B,3,2hp,2wp) in [0,255]; p_warp (B,K,hp,wp); mask (B,1,hp,wp) -> P_ref."""
        lw = log_probs(p_warp)
        f = self.stem(img_half)
        if f.shape[-2:] != p_warp.shape[-2:]:
            f = F.interpolate(f, size=p_warp.shape[-2:], mode='bilinear', align_corners=False)
        y = self.body(torch.cat([f, lw, mask], 1))
        return torch.softmax(lw + self.head(y), 1)


# ---------------------------------------------------------------------------------------- runtime
class TorchModule:
    """Base of the runtime wrappers: holds a network on a device, counts calls and time."""

    needs_context = False   # True: wants prev_image / flow_bwd (see temporal.TemporalPropagator)

    def __init__(self, net: nn.Module, device='cpu'):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.calls = 0
        self._ctx = {}

    def set_context(self, prev_image=None, flow_bwd=None):
        """Per-frame context for the plain-Propagator call path."""
        self._ctx = {'prev_image': prev_image, 'flow_bwd': flow_bwd}

    def __call__(self, image, warped, mask):
        probs, _ = self.refine(image, warped, mask, **self._ctx)
        return probs

    def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
        raise NotImplementedError


class EVSRefiner(TorchModule):
    """Runtime EVS refiner: ``refine`` returns (eq. 4 blend of P_ref and P_warp, IAM at the grid)."""

    def __init__(self, net: RefinerNet | None = None, device='cpu'):
        super().__init__(net if net is not None else RefinerNet(), device)

    def p_ref(self, image, warped, mask) -> tuple:
        k, hp, wp = check_warped(warped, self.net.num_classes, image, 'the EVS refiner')
        d = self.device
        with torch.inference_mode():
            pw = probs_tensor(warped.probs, d)
            m = mask_tensor(mask, (wp, hp), d)
            pr = self.net(image_tensor(image, (2 * wp, 2 * hp), d), pw, m)
        self.calls += 1
        return pr, pw, m

    def __call__(self, image, warped, mask):
        pr, _, _ = self.p_ref(image, warped, mask)
        return pr[0].cpu().numpy()

    def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
        pr, pw, m = self.p_ref(image, warped, mask)
        out = blend_torch(m, pr, pw)
        return out[0].cpu().numpy(), m[0, 0].cpu().numpy()


def iam_blend(mask, p_refined, p_warped) -> np.ndarray:
    """EVS eq. 4 (numpy), the blend the refiner is trained through (= ``iam.blend``)."""
    from .iam import blend
    return blend(mask, p_refined, p_warped)


# ---------------------------------------------------------------------------------------- cheap pass
# Cheap current-frame network of GRFP / DAVSS: ``NAME@WxH`` = model spec (registry name, 'default',
# a file) run at input size WxH; trained weights record theirs. Default for training and untrained
# modules; measured on the dev CPU (1 thread, both on torch; BENCHMARKS.md section 7.2) at 0.17 of the
# s2.0 512x256 keyframe pass. The packaged GRFP and DAVSS use espnetv2_s0.5_512x256@256x128 (about 0.18
# of the keyframe pass with both on onnxruntime; section 7.1).
DEFAULT_CHEAP = 'espnetv2_s0.5_512x256@192x96'


def parse_cheap(spec) -> tuple:
    """``'NAME[@WxH]'`` -> (NAME, (W, H) or None); ConfigError when malformed."""
    name, sep, size = str(spec).strip().partition('@')
    m = re.fullmatch(r'(\d+)[xX](\d+)', size.strip())
    if not name or (sep and not m):
        raise ConfigError(f'cheap network spec must be NAME or NAME@WxH (e.g. {DEFAULT_CHEAP}), got {spec!r}')
    return name, ((int(m.group(1)), int(m.group(2))) if m else None)


def cheap_matches(trained: str, requested: str) -> bool:
    """Same network, and the same size unless ``requested`` gives none."""
    (n1, s1), (n2, s2) = parse_cheap(trained), parse_cheap(requested)
    return n1 == n2 and (s2 is None or s1 == s2)


class CheapPass:
    """Cheap estimate of the current frame: a segmentation network (``model``, a KeyframeModel) at
    its input size (the image is area-resized to it), softmax resized to a given grid. ``spec``:
    ``NAME@WxH`` it was loaded from (see :func:`load`)."""

    def __init__(self, model, spec: str | None = None):
        self.model = model
        self.input_size = tuple(int(v) for v in model.input_size)
        self.num_outputs = int(model.num_outputs)
        self.spec = spec or f'{getattr(model, "name", "model")}@{self.input_size[0]}x{self.input_size[1]}'

    @classmethod
    def load(cls, spec: str, device='cpu', backend: str = 'auto') -> 'CheapPass':
        """Load ``NAME[@WxH]`` (without WxH: the network's own input size). ``backend``: as in
        ``models.load_model``; 'auto' is the fastest exact backend of the device (onnxruntime on the
        CPU, the same as the keyframe network's; its outputs match torch's to ~1e-5, so weights
        trained with either backend's cheap outputs are valid with the other)."""
        from .models import load_model
        name, size = parse_cheap(spec)
        model = load_model(name, device=device, backend=backend, input_size=size)
        w, h = model.input_size
        return cls(model, f'{name}@{w}x{h}')

    def __call__(self, image: np.ndarray, size_wh) -> np.ndarray:
        """Softmax of the network at its input size, resized (bilinear) to ``size_wh``: the same as
        ``model.segment(...).probs`` resized, without the labels the segmentation also computes."""
        logits = self.model.logits(resize_image(image, self.input_size))
        with torch.inference_mode():
            p = torch.softmax(torch.from_numpy(logits), 0).numpy()
        w, h = int(size_wh[0]), int(size_wh[1])
        if p.shape[1:] != (h, w):
            p = np.ascontiguousarray(cv2.resize(np.ascontiguousarray(p.transpose(1, 2, 0)), (w, h),
                                                interpolation=cv2.INTER_LINEAR)
                                     .reshape(h, w, -1).transpose(2, 0, 1))
        return p


def prev_warped_image(image: np.ndarray, prev_image, flow_bwd, size_wh) -> tuple:
    """(I_t, warp(I_{t-1}, flow(t, t-1))) as float32 (h, w, 3) at ``size_wh``; without a previous
    image/flow the warped image is I_t itself (zero difference)."""
    from .warp import warp_image
    cur = resize_image(image, size_wh).astype(np.float32)
    if prev_image is None or flow_bwd is None:
        return cur, cur.copy()
    prev = resize_image(np.asarray(prev_image), size_wh)
    return cur, warp_image(prev, _flow_at(flow_bwd, size_wh)).astype(np.float32)


def _flow_at(flow, size_wh):
    from .warp import make_remap
    return make_remap(flow, (int(size_wh[0]), int(size_wh[1])))


def hwc_tensor(a: np.ndarray, device='cpu') -> torch.Tensor:
    """(h, w, C) array -> (1, C, h, w) float tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(2, 0, 1)))[None].to(device)


def changed_region(p_new: np.ndarray, p_old: np.ndarray) -> np.ndarray:
    """Float (h, w) map of pixels whose argmax changed, dilated by one pixel."""
    ch = (np.argmax(p_new, 0) != np.argmax(p_old, 0)).astype(np.uint8)
    return cv2.dilate(ch, np.ones((3, 3), np.uint8)).astype(np.float32)
