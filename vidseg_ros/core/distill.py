"""Distil our own compact keyframe model from the ESPNetv2 s2.0 teacher (``vidseg train distill``).

Recipe (see vidseg_ros/weights/MODEL_CARD.md for the numbers of the committed model):
- student: ESPNetv2 at width ``--width`` (default 0.5), initialised from the published s0.5
  Cityscapes checkpoint when it exists (``--init``), 20 outputs like the teacher;
- teacher: ESPNetv2 s2.0, frozen, run on the same augmented crop at ``--teacher-size``; its weights
  are the published 1024x512 Cityscapes checkpoint unless ``--teacher-weights`` names another s2.0
  state dict (e.g. the 512x256 one, the keyframe network of the temporal benchmark);
- data: every real frame in ``<shared>/data`` except CamVid test (kept unseen for evaluation) and
  the Cityscapes snippets named by ``--holdout`` (kept for a held-out check): Cityscapes sequence
  frames, CamVid train (+ its human labels mapped to Cityscapes train ids where a class maps
  cleanly), Udacity highway video frames;
- loss: temperature-scaled KL to the teacher's soft labels on every pixel + cross-entropy with
  human labels where they exist (weight ``--human-weight``);
- augmentation: random 2:1 crops at 50-100 % scale, horizontal flips, brightness/contrast jitter;
  or (``--full-frames``, for a cheap network that always sees the whole frame at one size) whole
  frames with teacher logits computed once, flips and jitter only;
- Adam + cosine decay, fixed seed, resumable checkpoints every ``--ckpt-every`` iterations.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .classes import CAMVID_TO_CITYSCAPES, IGNORE
from .errors import ConfigError, InputError
from .paths import shared_dir

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _video_frames(path: Path, every: int = 1):
    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % every == 0:
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()


def collect_training_set(root: Path, holdout=('seq0003',), max_side: int = 1024, per_source=None):
    """List of (rgb uint8, human label uint8 in Cityscapes train ids or None, source name).

    Images are kept at most ``max_side`` wide (the teacher's input width) to bound memory.
    """
    items = []
    counts = {}

    def full(src):
        return per_source is not None and counts.get(src, 0) >= per_source

    def add(rgb, lab, src):
        counts[src] = counts.get(src, 0) + 1
        h, w = rgb.shape[:2]
        if w > max_side:
            s = max_side / w
            size = (max_side, int(round(h * s)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            if lab is not None:
                lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        items.append((np.ascontiguousarray(rgb), lab, src))

    cs = root / 'data' / 'cityscapes_seq'
    for seq in sorted(cs.glob('seq*')):
        if seq.name in holdout:
            continue
        for f in sorted(seq.glob('*.jpg')) + sorted(seq.glob('*.png')):
            if full('cityscapes_seq'):
                break
            bgr = cv2.imread(str(f))
            if bgr is not None:
                add(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, 'cityscapes_seq')
    cv = root / 'data' / 'camvid'
    for f in sorted((cv / 'train').glob('*')):
        if full('camvid_train'):
            break
        bgr = cv2.imread(str(f))
        ann = cv2.imread(str(cv / 'trainannot' / (f.stem + '.png')), cv2.IMREAD_GRAYSCALE)
        if bgr is None:
            continue
        lab = CAMVID_TO_CITYSCAPES[ann] if ann is not None else None
        add(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), lab, 'camvid_train')
    for v in sorted((root / 'data' / 'udacity').glob('*.mp4')):
        for rgb in _video_frames(v, every=2):
            if full('udacity'):
                break
            add(rgb, None, 'udacity')
    if not items:
        raise InputError(f'no training frames found under {root / "data"}')
    return items


class _SampledDataset(torch.utils.data.Dataset):
    """``length`` seeded samples of frames tagged with their source. ``balance_sources``: pick a
    source uniformly, then a frame of it (the Cityscapes sequence frames are otherwise only ~15 % of
    the samples next to CamVid and Udacity)."""

    def __init__(self, sources, length, seed=0, balance_sources=False):
        self.n, self.length, self.seed = len(sources), length, seed
        self.by_source = {}
        for i, src in enumerate(sources):
            self.by_source.setdefault(src, []).append(i)
        self.balance_sources = balance_sources

    def __len__(self):
        return self.length

    def _pick(self, idx) -> tuple:
        """(the sample's random generator, the index of its frame)."""
        rng = random.Random(self.seed * 1_000_003 + idx)
        if self.balance_sources:
            srcs = sorted(self.by_source)
            pool = self.by_source[srcs[rng.randrange(len(srcs))]]
            return rng, pool[rng.randrange(len(pool))]
        return rng, rng.randrange(self.n)


class CropDataset(_SampledDataset):
    """Random 2:1 crops (50-100 % of the largest 2:1 window), flips and photometric jitter."""

    def __init__(self, items, size_wh, length, seed=0, student_wh=None, balance_sources=False):
        super().__init__([src for _, _, src in items], length, seed, balance_sources)
        self.items, self.size = items, tuple(size_wh)
        self.student = tuple(student_wh or size_wh)

    def __getitem__(self, idx):
        rng, i = self._pick(idx)
        rgb, lab, _ = self.items[i]
        h, w = rgb.shape[:2]
        tw, th = self.size
        aspect = tw / th
        cw_max = min(w, int(h * aspect))
        cw = int(cw_max * rng.uniform(0.5, 1.0))
        ch = int(cw / aspect)
        x0, y0 = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
        crop = rgb[y0:y0 + ch, x0:x0 + cw]
        img = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
        # the student sees the crop resized straight to its own input size, as at deployment
        simg = img if self.student == self.size else cv2.resize(crop, self.student,
                                                                interpolation=cv2.INTER_LINEAR)
        if lab is not None:
            lab = cv2.resize(lab[y0:y0 + ch, x0:x0 + cw], (tw, th), interpolation=cv2.INTER_NEAREST)
        else:
            lab = np.full((th, tw), IGNORE, np.uint8)
        if rng.random() < 0.5:
            img, simg, lab = img[:, ::-1], simg[:, ::-1], lab[:, ::-1]
        a, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)

        def jitter(im):
            return torch.from_numpy(np.ascontiguousarray(
                np.clip(im.astype(np.float32) * a + b, 0, 255).astype(np.uint8))).permute(2, 0, 1)
        return jitter(img), jitter(simg), torch.from_numpy(np.ascontiguousarray(lab)).long()


def center_crop_aspect(img: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred window of ``img`` with width/height = ``aspect``."""
    h, w = img.shape[:2]
    if abs(w / h - aspect) < 1e-3:
        return img
    if w / h > aspect:
        cw = int(round(h * aspect))
        x0 = (w - cw) // 2
        return img[:, x0:x0 + cw]
    ch = int(round(w / aspect))
    y0 = (h - ch) // 2
    return img[y0:y0 + ch]


def full_frame_views(items, student_wh, teacher_wh):
    """``--full-frames``: each frame as the cheap network sees it at deployment (the whole frame,
    centre-cropped to the student's aspect, area-resized to its input size) and as the teacher sees it
    (the same window at ``teacher_wh``), plus its human label on the teacher's output grid / 2."""
    aspect = student_wh[0] / student_wh[1]
    grid = (teacher_wh[0] // 2, teacher_wh[1] // 2)
    out = []
    for rgb, lab, _ in items:
        c = center_crop_aspect(rgb, aspect)
        s = cv2.resize(c, tuple(student_wh), interpolation=cv2.INTER_AREA)
        t = cv2.resize(c, tuple(teacher_wh), interpolation=cv2.INTER_AREA)
        lab = None if lab is None else cv2.resize(center_crop_aspect(lab, aspect), grid,
                                                  interpolation=cv2.INTER_NEAREST)
        out.append((s, t, lab))
    return out


@torch.no_grad()
def teacher_logits_half(teacher, views, device, progress=True) -> torch.Tensor:
    """(N, K, H/2, W/2) float16 teacher logits of every view's teacher image, 2x2 average pooled."""
    from tqdm import tqdm
    out = []
    for _, t, _ in tqdm(views, desc='teacher', disable=not progress, mininterval=5):
        x = normalise(torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1)[None].to(device))
        out.append(F.avg_pool2d(teacher(x), 2).half().cpu())
    return torch.cat(out)


class FullFrameDataset(_SampledDataset):
    """Whole frames at the student's size with precomputed teacher logits: random horizontal flips
    (of the image, its teacher logits and label alike) and brightness/contrast jitter of the student's
    image (the teacher's target stays that of the clean frame)."""

    def __init__(self, views, logits, length, seed=0, sources=None, balance_sources=False):
        super().__init__(sources or ['all'] * len(views), length, seed, balance_sources)
        self.views, self.logits = views, logits

    def __getitem__(self, idx):
        rng, i = self._pick(idx)
        simg, _, lab = self.views[i]
        tl = self.logits[i].float()
        if lab is None:
            lab = np.full(tl.shape[-2:], IGNORE, np.uint8)
        if rng.random() < 0.5:
            simg, lab, tl = simg[:, ::-1], lab[:, ::-1], tl.flip(-1)
        a, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        img = np.clip(simg.astype(np.float32) * a + b, 0, 255).astype(np.uint8)
        return (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), tl,
                torch.from_numpy(np.ascontiguousarray(lab)).long())


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    x = x_uint8.float() / 255.0
    return (x - MEAN.to(x.device)) / STD.to(x.device)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def class_balance_weights(teacher_logits, power=0.5):
    """Per-pixel weights (mean 1) ~ freq(teacher class)^-power over the batch: rare classes (poles,
    persons, traffic lights) are not drowned by road, building and sky in the distillation loss."""
    lab = teacher_logits.argmax(1)
    k = teacher_logits.shape[1]
    freq = torch.bincount(lab.reshape(-1), minlength=k).float()
    w_cls = (freq / freq.sum()).clamp_min(1e-4) ** (-power)
    w = w_cls[lab]
    return w / w.mean()


def distillation_loss(student_logits, teacher_logits, labels, temperature=1.0, human_weight=1.0,
                      balance=0.0):
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    kd_px = (q * (torch.log(q.clamp_min(1e-8)) - log_p)).sum(1)
    if balance > 0:
        kd_px = kd_px * class_balance_weights(teacher_logits, balance)
    kd = kd_px.mean() * (t * t)
    valid = labels != IGNORE
    ce = F.cross_entropy(student_logits, labels, ignore_index=IGNORE) if valid.any() \
        else student_logits.sum() * 0
    return kd + human_weight * ce, kd.detach(), ce.detach()


def _build(width, path=None):
    from .models.espnetv2 import ESPNetv2Seg
    from .models import load_state_dict
    net = ESPNetv2Seg(width=width, num_classes=20)
    if path is not None:
        net.load_state_dict(load_state_dict(path), strict=True)
    return net


def train(args) -> Path:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device(args.device)
    root = Path(args.shared) if args.shared else shared_dir()
    tw = getattr(args, 'teacher_weights', 'auto') or 'auto'
    teacher_w = (root / 'models' / 'espnetv2' / 'espnetv2_s_2.0_city_1024x512.pth') if tw == 'auto' \
        else Path(tw)
    if not teacher_w.is_file():
        raise InputError(f'teacher weights not found: {teacher_w}')
    init = args.init
    if init == 'auto':
        d = root / 'models' / 'espnetv2'
        cands = [d / f'espnetv2_s_{args.width}_city_{args.size}.pth',
                 d / f'espnetv2_s_{args.width}_city_1024x512.pth']
        init = next((str(c) for c in cands if c.is_file()), None)
    elif init in ('none', ''):
        init = None
    def parse_size(text, opt):
        try:
            wh = tuple(int(v) for v in str(text).lower().split('x'))
        except ValueError:
            wh = ()
        if len(wh) != 2 or wh[0] % 16 or wh[1] % 16 or min(wh) <= 0:
            raise ConfigError(f'{opt} {text}: expected WxH with multiples of 16, e.g. 512x256')
        return wh
    size = parse_size(args.size, '--size')                    # student input
    tsize = parse_size(args.teacher_size, '--teacher-size')    # teacher input (and loss) size

    teacher = _build(2.0, teacher_w).to(dev).eval()
    student = _build(args.width, init).to(dev).train()
    if getattr(args, 'freeze_bn', False):
        # small CPU batches: keep the initialisation's BatchNorm statistics and affine parameters
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    items = collect_training_set(root, holdout=tuple(args.holdout), per_source=args.max_frames)
    n_h = sum(lab is not None for _, lab, _ in items)
    print(f'[distill] {len(items)} frames ({n_h} with human labels), student s{args.width} '
          f'init={init}, student size {size[0]}x{size[1]}, teacher size {tsize[0]}x{tsize[1]}, '
          f'device {dev}', flush=True)

    ckdir = Path(args.ckpt_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.Adam(student.parameters(), lr=args.lr, weight_decay=1e-5)
    total = [args.iters]   # shrunk once the measured speed says --time-budget would be exceeded
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total[0]) / total[0])))
    start = 0
    last = ckdir / 'last.ckpt'
    if last.is_file() and not args.restart:
        ck = torch.load(last, map_location=dev, weights_only=False)
        student.load_state_dict(ck['student'])
        opt.load_state_dict(ck['opt'])
        sched.load_state_dict(ck['sched'])
        start = ck['iter']
        print(f'[distill] resumed from {last} at iteration {start}', flush=True)

    full = getattr(args, 'full_frames', False)
    if full:
        views = full_frame_views(items, size, tsize)
        logits = teacher_logits_half(teacher, views, dev)
        ds = FullFrameDataset(views, logits, length=args.iters * args.batch, seed=args.seed,
                              sources=[src for _, _, src in items], balance_sources=args.balance_sources)
    else:
        ds = CropDataset(items, tsize, length=args.iters * args.batch, seed=args.seed, student_wh=size,
                         balance_sources=args.balance_sources)
    sampler = list(range(start * args.batch, args.iters * args.batch))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=sampler,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
    from tqdm import tqdm
    it = start
    hist = []
    t0 = time.time()
    for a, b, lab in tqdm(loader, total=args.iters - start, desc='distill', mininterval=5):
        lab = lab.to(dev, non_blocking=True)
        if full:   # (student image, precomputed teacher logits, label)
            simg, t_logits = a.to(dev, non_blocking=True), b.to(dev, non_blocking=True)
        else:      # (teacher image, student image, label)
            img, simg = a.to(dev, non_blocking=True), b.to(dev, non_blocking=True)
            with torch.no_grad():
                t_logits = teacher(normalise(img))
        s_logits = student(normalise(simg))
        if s_logits.shape[-2:] != t_logits.shape[-2:]:
            # compare at the teacher's resolution: the student's labels are upsampled at deployment
            s_logits = F.interpolate(s_logits, size=t_logits.shape[-2:], mode='bilinear',
                                     align_corners=False)
        loss, kd, ce = distillation_loss(s_logits, t_logits, lab, args.temperature, args.human_weight,
                                         args.balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        it += 1
        if args.time_budget and it == start + 20:
            rate = 20 / max(time.time() - t0, 1e-6)
            fit = start + int(rate * (args.time_budget - (time.time() - t0))) + 20
            if fit < total[0]:
                total[0] = max(fit, it + 1)
                print(f'\n[distill] {rate:.2f} it/s: --time-budget {args.time_budget}s allows '
                      f'{total[0]} iterations (cosine schedule shortened)', flush=True)
        if it % 50 == 0:
            hist.append({'iter': it, 'loss': float(loss.detach()), 'kd': float(kd), 'ce': float(ce)})
        if it % args.ckpt_every == 0 or it >= total[0]:
            torch.save({'student': student.state_dict(), 'opt': opt.state_dict(),
                        'sched': sched.state_dict(), 'iter': it}, last)
        if it >= total[0]:
            break
    student.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    torch.save(sd, out / 'default.pt')
    cfg = {'name': f'vidseg_compact_s{args.width}_{size[0]}x{size[1]}', 'arch': 'espnetv2',
           'width': args.width, 'input_size': list(size), 'class_set': 'cityscapes', 'num_outputs': 20,
           'output_to_class': list(range(19)) + [255], 'weights': 'default.pt'}
    import yaml
    (out / 'default.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / 'training.json').write_text(json.dumps({
        'recipe': {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                   if k != 'func'},
        'teacher_weights': str(teacher_w),
        'frames': len(items), 'frames_with_human_labels': n_h,
        'sources': sorted({s for _, _, s in items}),
        'init': init, 'iterations': it, 'train_seconds': round(time.time() - t0, 1), 'loss_history': hist},
        indent=1))
    print(f'[distill] wrote {out / "default.pt"} and default.yaml', flush=True)
    return out / 'default.pt'


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument('--width', type=float, default=0.5, help='student ESPNetv2 width (0.5, 1.0, ...)')
    p.add_argument('--init', default='auto',
                   help="student init: 'auto' (published checkpoint of that width if present), "
                        "'none', or a .pth path")
    p.add_argument('--size', default='512x256',
                   help='student input size WxH (multiples of 16); also its deployed input size')
    p.add_argument('--teacher-size', default='1024x512', help='teacher input size WxH')
    p.add_argument('--teacher-weights', default='auto',
                   help='ESPNetv2 s2.0 state dict of the teacher (auto: the published 1024x512 checkpoint)')
    p.add_argument('--iters', type=int, default=2000)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--temperature', type=float, default=1.0)
    p.add_argument('--human-weight', type=float, default=0.5)
    p.add_argument('--balance-sources', action=argparse.BooleanOptionalAction, default=True,
                   help='sample the data sources (Cityscapes, CamVid, Udacity) equally often')
    p.add_argument('--balance', type=float, default=0.5,
                   help='class-balance exponent of the distillation loss (0 = plain KD)')
    p.add_argument('--holdout', nargs='*', default=['seq0003'],
                   help='Cityscapes snippets kept out of training')
    p.add_argument('--full-frames', action='store_true',
                   help='train on whole frames as a cheap network sees them at deployment (centre 2:1 '
                        'window, area-resized to --size) with teacher logits computed once per frame '
                        '(~6x faster per iteration than random crops with the teacher in the loop)')
    p.add_argument('--freeze-bn', action='store_true',
                   help='keep the BatchNorm layers of the initialisation fixed (running statistics and affine '
                        'parameters); use with small batches, e.g. on a CPU')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-frames', type=int, default=None, help='at most N frames per source (smoke runs)')
    p.add_argument('--time-budget', type=float, default=0,
                   help='seconds; fewer iterations (with the cosine schedule fitted) if needed')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument('--ckpt-dir', default='runs/distill')
    p.add_argument('--ckpt-every', type=int, default=200)
    p.add_argument('--restart', action='store_true', help='ignore an existing checkpoint')
    p.add_argument('--shared', default=None, help='shared data root (default: ../shared)')
    p.add_argument('--out', default='runs/distill',
                   help='where default.pt/default.yaml go (default runs/distill; copy them into '
                        'vidseg_ros/weights/ to package them: the installed package folder is replaced on '
                        'every reinstall)')


def cli_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg train distill', description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    train(args)
    return 0


if __name__ == '__main__':
    raise SystemExit(cli_main())
