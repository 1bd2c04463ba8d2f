"""Train the learned temporal modules (``vidseg train temporal --mode refiner|grfp|davss``).

No dense human labels exist for consecutive video, so the keyframe network (teacher) labels every
frame; a module learns to map (keyframe semantics propagated k = 1..``--max-dist`` frames by the
real Propagator (DIS flow, IAM) + the current image [+ cheap pass, previous image]) to the teacher's
output on the current frame. Data: consecutive frames of ``cityscapes_seq`` seq0000-0002 (seq0003 is
kept for ``temporal_bench``) and the first ``--udacity-frames`` frames of the Udacity video, all
resized to the working size ``--size``. ``--sparse-labels`` (Lup & Nedevschi): targets only on every
10th frame (teacher) and flow-propagated teacher labels from it on the frames between.

GRFP/DAVSS also take the output of a cheap current-frame network ``--cheap NAME@WxH``
(``refiner.CheapPass``), recorded in the weights. Teacher outputs, flows and propagated states (and,
separately, each cheap network's outputs) are cached under ``runs/temporal_cache``. Training is
seeded, checkpointed every ``--ckpt-every`` iterations to ``runs/temporal/<mode>/last.ckpt`` (resumed
unless ``--restart``) and stops at ``--iters`` or ``--time-budget`` seconds. Output:
``<out>/<mode>.pt`` (a few hundred kB at most) and the mode's section in ``<out>/TEMPORAL.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .paths import shared_dir
from .refiner import DEFAULT_CHEAP, parse_cheap

TRAIN_SEQS = ('seq0000', 'seq0001', 'seq0002')
UDACITY_VIDEO = 'solidWhiteRight.mp4'   # the training data's 'udacity' sequence: its first frames
SPARSE_EVERY = 10


# ------------------------------------------------------------------------------------------ data
def parse_size(s: str) -> tuple:
    m = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', str(s))
    if not m:
        raise ConfigError(f'--size must be WxH (e.g. 512x256), got {s!r}')
    w, h = int(m.group(1)), int(m.group(2))
    if w % 16 or h % 16 or w < 64 or h < 32:
        raise ConfigError(f'--size {w}x{h}: width and height must be multiples of 16 (>= 64x32)')
    return w, h


def default_teacher(size) -> str:
    """Keyframe network for a working size: the published 512x256 s2.0 checkpoint up to 512 px
    wide, else the 1024x512 one."""
    return 'espnetv2_s2.0_512x256' if size[0] <= 512 else 'espnetv2_s2.0'


def load_sequences(root: Path, size, seqs=TRAIN_SEQS, udacity_frames: int = 60):
    """List of (name, [RGB frames at ``size``])."""
    out = []
    cs = root / 'data' / 'cityscapes_seq'
    for s in seqs:
        files = sorted((cs / s).glob('*_leftImg8bit.*'))
        if not files:
            raise InputError(f'no frames in {cs / s}')
        frames = []
        for f in files:
            bgr = cv2.imread(str(f))
            if bgr is None:
                raise InputError(f'cannot read {f}')
            frames.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA))
        out.append((s, frames))
    vid = root / 'data' / 'udacity' / UDACITY_VIDEO
    if udacity_frames > 0 and vid.is_file():
        frames = video_frames(vid, size, udacity_frames)
        if len(frames) > 1:
            out.append(('udacity', frames))
    return out


def video_frames(path, size, frames: int) -> list:
    """The first (at most) ``frames`` frames of a video, RGB, area-resized to ``size``."""
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def _area(img, size):
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA) if img.shape[1::-1] != tuple(size) else img


def _cached(path: Path, make) -> dict:
    """Arrays of the .npz at ``path``, else ``make()`` saved there."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp.npz')   # atomic: parallel runs share the cache
    try:
        np.savez(tmp, **data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return data


def prepare_data(root: Path, size, teacher: str, device='cpu', max_dist: int = 5, sparse: bool = False,
                 udacity_frames: int = 60, cache_dir='runs/temporal_cache', flow_preset='ultrafast',
                 seqs=TRAIN_SEQS, progress=True, cheap: str | None = None) -> dict:
    """Teacher outputs, flows and Propagator states for training, plus (``cheap``: a
    ``refiner.CheapPass`` spec) the cheap network's outputs on every frame as ``data['cheap']``.
    Both are cached as .npz (the cheap outputs separately, per cheap network)."""
    args = [str(root), size, teacher, max_dist, sparse, udacity_frames, flow_preset, list(seqs), 'grfp-v2']
    key = hashlib.sha1(json.dumps(args).encode()).hexdigest()[:12]
    tag = f'{size[0]}x{size[1]}_{key}'
    data = _cached(Path(cache_dir) / f'data_{tag}.npz',
                   lambda: _make_data(root, size, teacher, device, max_dist, sparse, udacity_frames,
                                      flow_preset, seqs, progress))
    if cheap is not None:
        from .refiner import CheapPass
        cp = CheapPass.load(cheap, device)
        ckey = hashlib.sha1(cp.spec.encode()).hexdigest()[:8]
        data.update(_cached(Path(cache_dir) / f'cheap_{tag}_{ckey}.npz',
                            lambda: _cheap_outputs(cp, root, size, seqs, udacity_frames, progress)))
        meta = json.loads(str(data['meta']))
        data['meta'] = np.asarray(json.dumps(dict(meta, cheap=cp.spec)))
    return data


def _cheap_outputs(cp, root, size, seqs, udacity_frames, progress) -> dict:
    """``cheap``: uint8-quantised cheap-pass probabilities on the probability grid of every frame."""
    from tqdm import tqdm

    from .propagation import prob_size
    grid = prob_size(size)
    frames = [f for _, fr in load_sequences(root, size, seqs, udacity_frames) for f in fr]
    out = [np.rint(cp(rgb, grid) * 255).clip(0, 255).astype(np.uint8)
           for rgb in tqdm(frames, desc=f'cheap {cp.spec}', disable=not progress, mininterval=5)]
    return {'cheap': np.stack(out)}


def _make_data(root, size, teacher, device, max_dist, sparse, udacity_frames, flow_preset, seqs,
               progress) -> dict:
    from tqdm import tqdm

    from .flow import FlowEstimator
    from .models import load_model
    from .propagation import Propagator, prob_size, semantics_from_segmentation
    from .warp import make_remap, warp_image

    model = load_model(teacher, device=device, backend='torch', input_size=size)
    cm = np.asarray(model.output_to_class, np.uint8)
    flow = FlowEstimator('dis', preset=flow_preset)
    wp, hp = prob_size(size)
    seqs_data = load_sequences(root, size, seqs, udacity_frames)
    n_total = sum(len(f) for _, f in seqs_data)
    A = {k: [] for k in ('img_half', 'img_q', 'prevw_q', 'teacher', 'target', 'grid', 'seq')}
    S = {k: [] for k in ('frame', 'key', 'warped', 'mask')}
    G, GM = [], []   # GRFP sequences: global index of the keyframe, sample indices of its 3 steps
    bar = tqdm(total=n_total, desc='teacher+flow', disable=not progress, mininterval=5)
    base = 0
    for si, (name, frames) in enumerate(seqs_data):
        sems, bwd, fwd = [], [None], [None]
        for t, rgb in enumerate(frames):
            sem = semantics_from_segmentation(model.segment(rgb), cm, size)
            sems.append(sem)
            A['teacher'].append(sem.probs)
            A['img_half'].append(_area(rgb, (2 * wp, 2 * hp)))
            q = _area(rgb, (wp, hp))
            A['img_q'].append(q)
            A['seq'].append(si)
            if t == 0:
                A['prevw_q'].append(q.copy())
                A['grid'].append(np.stack(np.meshgrid(np.arange(wp, dtype=np.float32),
                                                      np.arange(hp, dtype=np.float32)), -1))
            else:
                g_prev = cv2.cvtColor(frames[t - 1], cv2.COLOR_RGB2GRAY)
                g_cur = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
                f_fwd, f_bwd = flow.forward_backward(g_prev, g_cur, native=True)
                bwd.append(f_bwd)
                fwd.append(f_fwd)
                rm = make_remap(f_bwd, (wp, hp))
                A['prevw_q'].append(warp_image(A['img_q'][-2], rm))
                A['grid'].append(np.stack([rm.map_x, rm.map_y], -1))
            bar.update(1)
        n = len(frames)

        def propagate(k, t_end):
            p = Propagator()
            p.set_keyframe(k, sems[k])
            p.step(k)
            outs = []
            for t in range(k + 1, t_end + 1):
                outs.append((t, p.step(t, bwd[t], fwd[t])))
            return outs

        for t in range(n):   # targets
            if not sparse or t % SPARSE_EVERY == 0:
                A['target'].append(sems[t].probs)
            else:
                s = (t // SPARSE_EVERY) * SPARSE_EVERY
                A['target'].append(propagate(s, t)[-1][1].semantics.probs)
        for k in range(n - 1):
            first = len(S['frame'])
            for t, out in propagate(k, min(n - 1, k + max_dist)):
                S['frame'].append(base + t)
                S['key'].append(base + k)
                S['warped'].append(out.semantics.probs)
                m = out.mask if out.mask is not None else np.zeros(size[::-1], np.float32)
                S['mask'].append(np.rint(_area(m, (wp, hp)) * 255).astype(np.uint8))
            if k + max_dist < n:   # GRFP: the keyframe and its max_dist following frames
                G.append(base + k)
                GM.append(list(range(first, first + max_dist)))
        base += n
    bar.close()
    data = {k: np.stack(v) for k, v in A.items()}
    data.update({k: np.stack(v) for k, v in S.items()})
    data['grfp_keys'] = np.asarray(G, np.int64)
    data['grfp_mask_idx'] = np.asarray(GM, np.int64).reshape(-1, max_dist)
    data['meta'] = np.asarray(json.dumps({'teacher': teacher, 'size': list(size), 'frames': n_total,
                                          'sequences': [s for s, _ in seqs_data], 'sparse': sparse,
                                          'max_dist': max_dist}))
    return data


# ------------------------------------------------------------------------------------------ batches
def _t(a, dev, scale=None):
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x.float() if scale is None else x.float() * scale
    return x.to(dev)


def _chw(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, -3))


def grid_warp(h: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of (B, K, h, w) by absolute sampling maps (B, h, w, 2), border replicate
    (the differentiable twin of cv2.remap in warp.warp_probs)."""
    hh, ww = h.shape[-2:]
    g = torch.stack([grid[..., 0] * (2.0 / max(ww - 1, 1)) - 1.0,
                     grid[..., 1] * (2.0 / max(hh - 1, 1)) - 1.0], -1)
    return F.grid_sample(h, g, mode='bilinear', padding_mode='border', align_corners=True)


def step_loss(mode, net, data, idx, dev, steps: int | None = None):
    """Loss on a batch: sample indices (refiner/davss) or GRFP keyframe indices (GRFP: mean over
    ``steps`` recurrent steps, default all that the data holds)."""
    from .refiner import blend_torch, log_probs, soft_ce
    u8 = 1.0 / 255.0
    if mode == 'grfp':
        keys = data['grfp_keys'][idx]
        midx = data['grfp_mask_idx'][idx]
        h = _t(data['teacher'][keys], dev, u8)
        loss = 0.0
        T = midx.shape[1] if steps is None else min(int(steps), midx.shape[1])
        for s in range(1, T + 1):
            f = keys + s
            w = log_probs(grid_warp(h, _t(data['grid'][f], dev)))
            x = log_probs(_t(data['cheap'][f], dev, u8))
            diff = _t(_chw(data['img_q'][f].astype(np.float32) - data['prevw_q'][f]), dev)
            m = _t(data['mask'][midx[:, s - 1]][:, None], dev, u8)
            h, _ = net(w, x, diff, m)
            loss = loss + soft_ce(h, _t(data['target'][f], dev, u8))
        return loss / T
    f = data['frame'][idx]
    pw = _t(data['warped'][idx], dev, u8)
    tgt = _t(data['target'][f], dev, u8)
    img_half = _t(_chw(data['img_half'][f]), dev)
    if mode == 'refiner':
        m = _t(data['mask'][idx][:, None], dev, u8)
        pr = net(img_half, pw, m)
        return soft_ce(blend_torch(m, pr, pw), tgt) + 0.5 * soft_ce(pr, tgt, weight=m)
    if mode == 'davss':
        cur = _t(_chw(data['img_q'][f]), dev)
        prev_w = _t(_chw(data['prevw_q'][f]), dev)
        pc_in = _t(data['cheap'][f], dev, u8)
        p, dl, pc = net(img_half, cur, prev_w, pw, pc_in)
        dt = (pw.argmax(1, keepdim=True) != tgt.argmax(1, keepdim=True)).float()
        # unweighted BCE: D is blended as a probability of distortion, so it must stay calibrated
        bce = F.binary_cross_entropy_with_logits(dl, dt)
        return soft_ce(p, tgt) + 0.5 * bce + 0.5 * soft_ce(pc, tgt, weight=dt)
    raise ConfigError(f'unknown learned mode {mode!r}')


@torch.no_grad()
def evaluate(mode, net, data, idx, dev, batch=16, steps: int | None = None) -> dict:
    """On the given samples (training data: a sanity check, not a held-out score): mean loss and,
    for refiner/davss, the share of pixels whose argmax agrees with the target's, for the module
    and for plain warping."""
    from .refiner import blend_torch
    net.eval()
    losses, agree, agree_w = [], [], []
    u8 = 1.0 / 255.0
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        losses.append(float(step_loss(mode, net, data, b, dev, steps)))
        if mode == 'grfp':
            continue
        f = data['frame'][b]
        pw = _t(data['warped'][b], dev, u8)
        tgt = _t(data['target'][f], dev, u8).argmax(1)
        img_half = _t(_chw(data['img_half'][f]), dev)
        if mode == 'refiner':
            m = _t(data['mask'][b][:, None], dev, u8)
            p = blend_torch(m, net(img_half, pw, m), pw)
        else:
            p = net(img_half, _t(_chw(data['img_q'][f]), dev), _t(_chw(data['prevw_q'][f]), dev), pw,
                    _t(data['cheap'][f], dev, u8))[0]
        agree.append(float((p.argmax(1) == tgt).float().mean()))
        agree_w.append(float((pw.argmax(1) == tgt).float().mean()))
    net.train()
    out = {'loss': float(np.mean(losses)) if losses else float('nan')}
    if agree:
        out['agree'] = float(np.mean(agree))
        out['agree_warp'] = float(np.mean(agree_w))
    return out


# ------------------------------------------------------------------------------------------ training
def net_config(args, num_classes: int) -> dict:
    """Constructor kwargs of the network to train (stored with the weights)."""
    cfg = {'num_classes': int(num_classes)}
    if args.mode == 'grfp':
        if int(getattr(args, 'stgru_kernel', 3)) != 3:
            cfg['kernel'] = int(args.stgru_kernel)
        if getattr(args, 'gate_classes', False):
            cfg['gate_classes'] = True
        if getattr(args, 'stgru_separable', False):
            cfg['separable'] = True
    return cfg


def train(args) -> Path:
    from tqdm import tqdm

    from .temporal import build_net, save_net
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError('--device cuda requested but CUDA is not available')
    dev = torch.device(args.device)
    size = parse_size(args.size)
    root = Path(args.shared) if args.shared else shared_dir()
    if not (root / 'data' / 'cityscapes_seq').is_dir():
        raise InputError(f'training data not found: {root / "data" / "cityscapes_seq"}')
    teacher = args.teacher if args.teacher != 'auto' else default_teacher(size)
    t_prep = time.time()
    data = prepare_data(root, size, teacher, args.device, args.max_dist, args.sparse_labels,
                        args.udacity_frames, args.cache_dir, seqs=tuple(args.seqs),
                        cheap=None if args.mode == 'refiner' else args.cheap)
    prep_s = time.time() - t_prep
    cheap = json.loads(str(data['meta'])).get('cheap')
    n = len(data['grfp_keys']) if args.mode == 'grfp' else len(data['frame'])
    if n == 0:
        raise InputError(f'no training {"sequences" if args.mode == "grfp" else "samples"} '
                         f'(too few frames for --max-dist {args.max_dist})')
    print(f'[temporal] mode {args.mode}: {n} training {"sequences" if args.mode == "grfp" else "samples"} '
          f'at {size[0]}x{size[1]} (teacher {teacher}{", cheap network " + cheap if cheap else ""}, '
          f'data {prep_s:.0f} s), device {dev}', flush=True)
    net_cfg = net_config(args, int(data['teacher'].shape[1]))
    net = build_net(args.mode, net_cfg).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckdir = Path(args.ckpt_dir) / args.mode
    ckdir.mkdir(parents=True, exist_ok=True)
    last = ckdir / 'last.ckpt'
    start = 0
    if last.is_file() and not args.restart:
        ck = torch.load(last, map_location=dev, weights_only=False)
        try:
            if ck.get('size') != list(size) or ck.get('teacher') != teacher or ck.get('cheap') != cheap:
                raise ValueError('other size/teacher/cheap network')
            if ck.get('config', {'num_classes': net_cfg['num_classes']}) != net_cfg:
                raise ValueError('other network configuration')
            net.load_state_dict(ck['net'])
            opt.load_state_dict(ck['opt'])
            start = int(ck['iter'])
            print(f'[temporal] resumed from {last} at iteration {start}', flush=True)
        except (ValueError, RuntimeError, KeyError) as e:
            net = build_net(args.mode, net_cfg).to(dev).train()
            opt = torch.optim.Adam(net.parameters(), lr=args.lr)
            print(f'[temporal] checkpoint {last} does not fit ({str(e).splitlines()[0][:80]}): '
                  'starting afresh', flush=True)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(np.arange(n).repeat(max(1, -(-args.iters * args.batch // n))))
    probe = np.sort(np.random.default_rng(1).choice(n, min(n, 64), replace=False))
    before = evaluate(args.mode, net, data, probe, dev, steps=args.grfp_steps) if start == 0 else None
    t0 = time.time()
    it = start
    hist = []
    total = args.iters   # shrunk once the measured speed says --time-budget would be exceeded
    bar = tqdm(total=args.iters, initial=start, desc=f'train {args.mode}', mininterval=5)
    while it < total:
        idx = order[it * args.batch:(it + 1) * args.batch]
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * min(it / total, 1.0)))
        for g in opt.param_groups:
            g['lr'] = lr
        loss = step_loss(args.mode, net, data, idx, dev, args.grfp_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        bar.update(1)
        if it % 25 == 0:
            hist.append({'iter': it, 'loss': round(float(loss.detach()), 5)})
            bar.set_postfix(loss=f'{float(loss.detach()):.4f}')
        if args.time_budget and it == start + 10:
            rate = 10 / max(time.time() - t0, 1e-6)
            fit = it + int(rate * (args.time_budget - (time.time() - t0)))
            if fit < total:
                total = max(fit, it + 1)
                print(f'\n[temporal] {rate:.2f} it/s: --time-budget {args.time_budget}s allows {total} '
                      'iterations (cosine schedule shortened)', flush=True)
        stop = args.time_budget and time.time() - t0 > 1.1 * args.time_budget
        if it % args.ckpt_every == 0 or it >= total or stop:
            torch.save({'net': net.state_dict(), 'opt': opt.state_dict(), 'iter': it,
                        'size': list(size), 'teacher': teacher, 'cheap': cheap, 'config': net_cfg}, last)
        if stop:
            print(f'\n[temporal] --time-budget {args.time_budget}s reached at iteration {it}', flush=True)
            break
    bar.close()
    after = evaluate(args.mode, net, data, probe, dev, steps=args.grfp_steps)
    net = net.cpu().eval()
    out = Path(args.out)
    meta = {'mode': args.mode, 'teacher': teacher, 'size': list(size), 'iterations': it,
            'batch': args.batch, 'lr': args.lr, 'seed': args.seed, 'sparse_labels': args.sparse_labels,
            'max_dist': args.max_dist, 'train_seconds': round(time.time() - t0, 1),
            'device': str(dev), 'samples': n, 'data': json.loads(str(data['meta'])),
            'probe_loss_before': None if before is None else round(before['loss'], 5),
            'probe_loss_after': round(after['loss'], 5), 'loss_history': hist[-40:],
            'probe_agree': after.get('agree'), 'probe_agree_warp': after.get('agree_warp'),
            'params': int(sum(p.numel() for p in net.parameters())),
            'cheap': cheap, 'command': getattr(args, 'command', None), 'net_config': net_cfg,
            'grfp_steps': min(args.grfp_steps, args.max_dist) if args.mode == 'grfp' else None}
    path = save_net(net, args.mode, out / f'{args.mode}.pt', meta)
    write_card(out / 'TEMPORAL.md', args.mode, meta)
    print(f'[temporal] wrote {path} ({path.stat().st_size / 1024:.0f} kB); probe loss '
          f'{meta["probe_loss_before"]} -> {meta["probe_loss_after"]}', flush=True)
    return path


ALL_SEQS = ('seq0000', 'seq0001', 'seq0002', 'seq0003')   # the cityscapes_seq snippets
CARD_HEAD = ('# Temporal modules (issue 4)\n\nWritten by `vidseg train temporal`; one section per mode '
             '(replaced when the mode is retrained). Accuracy: see `python -m vidseg_ros.core.temporal_bench`.\n')


def _unit(mode: str, meta: dict) -> str:
    return f'sequences ({meta.get("grfp_steps") or 3} recurrent steps)' if mode == 'grfp' else 'samples'


def write_card(path: Path, mode: str, meta: dict) -> None:
    """Replace ``mode``'s section in the temporal model card."""
    text = path.read_text() if path.is_file() else CARD_HEAD
    d = meta['data']
    sec = (f'\n## {mode}\n\n'
           f'- network: {meta["params"]} parameters; weights `{mode}.pt`'
           + ''.join(f'; {k} {v}' for k, v in (meta.get('net_config') or {}).items() if k != 'num_classes')
           + '\n'
           f'- teacher: `{meta["teacher"]}` at {meta["size"][0]}x{meta["size"][1]} (working size); '
           f'data: {d["frames"]} frames of {", ".join(d["sequences"])} (held out: {", ".join(x for x in ALL_SEQS if x not in d["sequences"]) or "none"}), '
           f'{meta["samples"]} {_unit(mode, meta)}, '
           f'keyframe distance 1..{meta["max_dist"]}'
           f'{", sparse labels every %d frames" % SPARSE_EVERY if meta["sparse_labels"] else ""}'
           f'{"; cheap network `%s`" % meta["cheap"] if meta.get("cheap") else ""}\n'
           f'- training: {meta["iterations"]} iterations x batch {meta["batch"]}, Adam lr {meta["lr"]} '
           f'cosine, seed {meta["seed"]}, {meta["train_seconds"]} s on {meta["device"]}\n'
           f'- probe loss (64 training samples, soft cross-entropy vs teacher): '
           f'{meta["probe_loss_before"]} (untrained, starts as plain warping) -> {meta["probe_loss_after"]}'
           + ('' if meta.get('probe_agree') is None else
              f'; argmax agreement with the target {100 * meta["probe_agree"]:.1f}% '
              f'(plain warping {100 * meta["probe_agree_warp"]:.1f}%)') + '\n'
           + (f'- command: `{meta["command"]}`\n' if meta.get('command') else ''))
    parts = re.split(r'(?m)^(?=## )', text)
    parts = [p for p in parts if not p.startswith(f'## {mode}\n')]
    text = ''.join(parts).rstrip('\n') + '\n' + sec
    path.write_text(text)


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument('--mode', required=True, choices=('refiner', 'grfp', 'davss'))
    p.add_argument('--iters', type=int, default=600)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--size', default='512x256', help='working size WxH (teacher input size)')
    p.add_argument('--teacher', default='auto', help="keyframe network spec (auto: s2.0 at the size)")
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--time-budget', type=float, default=0, help='seconds of training (0 = no limit)')
    p.add_argument('--sparse-labels', action='store_true',
                   help='targets only every 10th frame + flow-propagated ones between')
    p.add_argument('--max-dist', type=int, default=5, help='max keyframe distance of the samples')
    p.add_argument('--grfp-steps', type=int, default=4,
                   help='grfp: recurrent steps per training sequence (<= --max-dist; S=5 propagates 1..4)')
    p.add_argument('--stgru-kernel', type=int, default=3, choices=(1, 3, 5),
                   help='grfp: kernel of the STGRU candidate convolutions (1 = about 9x cheaper than 3)')
    p.add_argument('--gate-classes', action='store_true',
                   help="grfp: restrict the cheap estimate to the classes of the warped state "
                        "(grfp.gate_to_state); recorded in the weights")
    p.add_argument('--stgru-separable', action='store_true',
                   help='grfp: depthwise-separable STGRU convolutions (about 1/3 of the STGRU time)')
    p.add_argument('--seqs', nargs='+', default=list(TRAIN_SEQS), help='cityscapes_seq snippets to train on')
    p.add_argument('--udacity-frames', type=int, default=60)
    p.add_argument('--cheap', default=DEFAULT_CHEAP,
                   help='grfp/davss: cheap current-frame network NAME@WxH (model spec at input size WxH); '
                        'recorded in the weights')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads (0 = torch default; 1 suits a shared 2-core machine)')
    p.add_argument('--ckpt-dir', default='runs/temporal')
    p.add_argument('--ckpt-every', type=int, default=100)
    p.add_argument('--cache-dir', default='runs/temporal_cache')
    p.add_argument('--restart', action='store_true', help='ignore an existing checkpoint')
    p.add_argument('--shared', default=None, help='shared data root (default: ../shared)')
    p.add_argument('--out', default='runs/temporal',
                   help='where <mode>.pt and its TEMPORAL.md section go (default runs/temporal; copy the .pt '
                        'into vidseg_ros/weights/ to package it: the installed package folder is replaced '
                        'on every reinstall)')


def cli_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vidseg train temporal', description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    args.command = 'vidseg train temporal ' + ' '.join(sys.argv[1:] if argv is None else argv)
    if args.iters < 1 or args.batch < 1:
        raise ConfigError('--iters and --batch must be >= 1')
    if args.mode != 'refiner':
        parse_cheap(args.cheap)
    if args.grfp_steps < 1:
        raise ConfigError('--grfp-steps must be >= 1')
    if args.mode != 'grfp' and (args.stgru_kernel != 3 or args.gate_classes or args.stgru_separable):
        raise ConfigError('--stgru-kernel, --stgru-separable and --gate-classes apply to --mode grfp only')
    if 'seq0003' in args.seqs:
        print('[temporal] note: seq0003 is the default held-out snippet of temporal_bench (fine for a '
              'cross-validation fold that holds out another one)', flush=True)
    train(args)
    return 0


if __name__ == '__main__':   # same as `vidseg train temporal` (one-line errors, exit 2)
    from vidseg_ros.cli import main as _vidseg
    raise SystemExit(_vidseg(['train', 'temporal'] + sys.argv[1:]))
