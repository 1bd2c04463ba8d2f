"""Synthetic drive with exact labels and exact optical flow (``vidseg synth``).

A procedurally built street (road with lane markings, sidewalks, terrain, buildings, trees, hedges,
poles, traffic signs and lights, parked / moving cars, walking and crossing pedestrians) is seen by a
pinhole camera driving along the road with slight sway, yaw, pitch bounce and roll. Primitives are
boxes and ellipsoids with procedural textures (tileable spectral noise, bricks, slabs, leaves; mip-mapped
by pixel footprint so brightness stays constant across frames). Every pixel is ray cast against all
primitives (a z-buffer: exact visibility, equivalent to painter's order per pixel), so its class
(Cityscapes train id), its 3D point and the rigid motion of the object owning it are known exactly:
projecting that point with the object's and the camera's pose at t-1 / t+1 gives the exact backward flow
``flow(t, t-1)`` and forward flow ``flow(t, t+1)`` (DESIGN.md convention ``a(x) ~= b(x + flow(x))``,
pixel-index coordinates). Sky pixels are points at infinity: their flow comes from camera rotation only.
Flow is that of the surface visible at t, also where it is occluded in the other frame (as in Sintel).

World frame: X right, Y up, Z forward along the road (metres); time in seconds ``s = t / fps``.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .classes import CITYSCAPES
from .errors import ConfigError, InputError

try:  # .flo I/O lives in core/flow.py (DESIGN.md)
    from .flow import read_flo, write_flo  # noqa: F401  (re-exported for convenience)
except ImportError:  # pragma: no cover - only while core/flow.py does not exist
    read_flo = write_flo = None

# Cityscapes train ids used by the scene
ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 13
SCENE_CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR)

# road layout (|X| in metres): parking lanes 3.5..5.5, sidewalk 5.5..9, terrain beyond
LANE_W = 3.5
ROAD_HALF = 5.5
SIDEWALK_OUT = 9.0
EGO_X = 1.75
CAM_HEIGHT = 1.45
NEAR = 0.1
FAR_CULL = 250.0  # primitives wholly farther than this (camera z) are not drawn (hidden in haze)
HAZE_M = 180.0
TEX = 256  # texture tile size (texels)

BOX, ELLIPSOID = 0, 1
SKY_ID, GROUND_ID, PRIM0 = 0, 1, 2  # per-pixel owner ids; primitive i has id PRIM0 + i

_SUN = np.array([-0.45, 0.8, -0.4])
_SUN /= np.linalg.norm(_SUN)
_HAZE = np.array([0.78, 0.82, 0.88], np.float32)


# ----------------------------------------------------------------------------------------- textures
def _noise(rng, n, beta, aniso=(1.0, 1.0)):
    """Tileable spectral noise (power ~ 1/f**beta), zero mean, unit std, (n, n) float32."""
    fy = np.fft.fftfreq(n)[:, None] * aniso[1]
    fx = np.fft.rfftfreq(n)[None, :] * aniso[0]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
    img = np.fft.irfft2(spec, s=(n, n))
    img = (img - img.mean()) / (img.std() + 1e-12)
    return img.astype(np.float32)


def _rgb(base, mod):
    return np.clip(np.asarray(base, np.float32)[None, None, :] * mod[..., None], 0.0, 1.5)


def _smooth_rect(n, u0, u1, v0, v1, soft=1.5):
    """(n, n) coverage of the axis-aligned rectangle [u0,u1]x[v0,v1] (in texels), soft edges."""
    c = np.arange(n, dtype=np.float32) + 0.5
    cu = np.clip(np.minimum(c - u0, u1 - c) / soft + 0.5, 0, 1)
    cv_ = np.clip(np.minimum(c - v0, v1 - c) / soft + 0.5, 0, 1)
    return cv_[:, None] * cu[None, :]


def _make_textures(rng):
    """Material name -> (RGB float32 texture (TEX, TEX, 3) in [0, ~1.2], tile size (su, sv) metres)."""
    n = TEX
    tex = {}
    fine, mid, coarse = _noise(rng, n, 0.4), _noise(rng, n, 1.5), _noise(rng, n, 3.0)
    spk = (rng.random((n, n)) > 0.985).astype(np.float32)
    tex['asphalt'] = (_rgb([0.34, 0.34, 0.36], 1.0 + 0.16 * fine + 0.10 * mid + 0.06 * coarse + 0.35 * spk),
                      (3.0, 3.0))
    # sidewalk: 0.6 m slabs (4 per 2.4 m tile), dark joints, per-slab tone
    slab = n // 4
    yy, xx = np.mgrid[0:n, 0:n]
    joint = ((xx % slab < 2) | (yy % slab < 2)).astype(np.float32)
    tone = rng.uniform(0.9, 1.1, (4, 4)).astype(np.float32)[yy // slab, xx // slab]
    tex['sidewalk'] = (_rgb([0.62, 0.60, 0.57], tone * (1.0 + 0.10 * _noise(rng, n, 0.6) + 0.05 * mid)
                            * (1.0 - 0.45 * joint)), (2.4, 2.4))
    g1, g2 = _noise(rng, n, 0.2), _noise(rng, n, 2.5)
    mix = np.clip(0.5 + 0.35 * g2, 0, 1)[..., None]
    grass = _rgb([0.33, 0.47, 0.18], 1.0 + 0.28 * g1)
    dirt = _rgb([0.46, 0.39, 0.28], 1.0 + 0.2 * g1)
    tex['terrain'] = (grass * mix + dirt * (1 - mix), (4.0, 4.0))
    # building facades: bricks with one window per tile (a bay of 3.5 m x 3.2 m)
    brick_h = 10
    row = yy // brick_h
    off = (row % 2) * 12
    mortar = ((yy % brick_h < 2) | ((xx + off) % 24 < 2)).astype(np.float32)
    btone = rng.uniform(0.85, 1.15, (n // brick_h + 1, n // 24 + 2)).astype(np.float32)[row, (xx + off) // 24]
    win = _smooth_rect(n, 0.28 * n, 0.72 * n, 0.30 * n, 0.78 * n)  # v grows downwards in the tile
    frame = np.clip(_smooth_rect(n, 0.25 * n, 0.75 * n, 0.27 * n, 0.81 * n) - win, 0, 1)
    glass = _rgb([0.22, 0.28, 0.36], 1.0 + 0.25 * _noise(rng, n, 2.0) + 0.05 * fine)
    for i, base in enumerate(([0.62, 0.33, 0.25], [0.76, 0.70, 0.58], [0.55, 0.55, 0.56], [0.80, 0.72, 0.45])):
        wall = _rgb(base, btone * (1.0 + 0.10 * fine) * (1.0 - 0.35 * mortar))
        img = wall * (1 - win[..., None]) + glass * win[..., None]
        img = img * (1 - frame[..., None]) + 0.85 * frame[..., None]
        tex[f'facade{i}'] = (img[::-1].copy(), (3.5, 3.2))  # flip: texture v runs upwards like world Y
    bark = _noise(rng, n, 1.2, aniso=(1.0, 0.15))
    tex['bark'] = (_rgb([0.36, 0.27, 0.19], 1.0 + 0.3 * bark + 0.1 * fine), (1.0, 2.0))
    lv, lv2 = _noise(rng, n, 0.8), _noise(rng, n, 2.2)
    leaves = np.clip(1.0 + 0.45 * lv + 0.15 * lv2, 0.25, 2.0)
    tex['leaves'] = (_rgb([0.20, 0.38, 0.12], leaves) + _rgb([0.06, 0.05, -0.04], np.maximum(lv2, 0)), (1.5, 1.5))
    tex['metal'] = (_rgb([0.52, 0.53, 0.55], 1.0 + 0.06 * fine + 0.05 * _noise(rng, n, 1.0, (0.2, 1.0))), (0.5, 1.0))
    # traffic sign face (tile = the whole plate): red ring, white disc, dark bar
    c = (np.arange(n) + 0.5 - n / 2) / (n / 2)
    r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    ring = np.clip((r - 0.68) * 30, 0, 1) * np.clip((0.98 - r) * 30, 0, 1)
    disc = np.clip((0.7 - r) * 30, 0, 1)
    bar = _smooth_rect(n, 0.25 * n, 0.75 * n, 0.43 * n, 0.57 * n) * disc
    sign = (_rgb([0.55, 0.56, 0.58], 1.0 + 0.05 * fine) * (1 - ring - disc)[..., None]
            + ring[..., None] * np.float32([0.85, 0.08, 0.08])
            + (disc - bar)[..., None] * np.float32([0.95, 0.95, 0.95])
            + bar[..., None] * np.float32([0.12, 0.12, 0.14]))
    tex['sign'] = (sign.astype(np.float32), (1.0, 1.0))
    # traffic light front (tile = housing front): dark body with three lamps, green one lit
    tl = _rgb([0.10, 0.10, 0.09], 1.0 + 0.1 * fine)
    cx = (np.arange(n) + 0.5) / n
    for k, col in enumerate(([0.35, 0.05, 0.04], [0.35, 0.30, 0.04], [0.25, 1.0, 0.45])):
        cy = (np.arange(n) + 0.5) / n
        d = np.sqrt((cx[None, :] - 0.5) ** 2 + ((cy[:, None] - (0.2 + 0.3 * k)) * 3.0) ** 2)
        lamp = np.clip((0.32 - d) * 40, 0, 1)[..., None]
        tl = tl * (1 - lamp) + lamp * np.float32(col)
    tex['tlight'] = (tl[::-1].copy(), (1.0, 1.0))
    tex['paint'] = (_rgb([1.0, 1.0, 1.0], 1.0 + 0.04 * fine + 0.04 * mid), (2.0, 2.0))
    tex['glass'] = (_rgb([0.16, 0.19, 0.23], 1.0 + 0.35 * _noise(rng, n, 2.5) + 0.05 * fine), (2.0, 2.0))
    tex['tyre'] = (_rgb([0.09, 0.09, 0.09], 1.0 + 0.2 * fine), (1.0, 1.0))
    tex['cloth'] = (_rgb([1.0, 1.0, 1.0], 1.0 + 0.15 * fine + 0.1 * _noise(rng, n, 1.5)), (0.5, 0.5))
    tex['skin'] = (_rgb([0.80, 0.62, 0.50], 1.0 + 0.08 * fine + 0.1 * mid), (0.3, 0.3))
    cl = _noise(rng, n, 3.2) + 0.25 * _noise(rng, n, 1.2)
    cloud = np.clip(cl - 0.3, 0, 2.0)
    tex['clouds'] = (np.repeat(np.clip(cloud / 1.5, 0, 1)[..., None], 3, axis=2).astype(np.float32), (1.0, 1.0))
    return tex


class _Material:
    """A texture with its mip pyramid (2x2 box filter, exactly tileable) and tile size in metres."""

    def __init__(self, img, tile):
        self.levels = [np.ascontiguousarray(img, dtype=np.float32)]
        while self.levels[-1].shape[0] > 2:
            a = self.levels[-1]
            s = a.shape[0] // 2
            self.levels.append(a.reshape(s, 2, s, 2, 3).mean(axis=(1, 3)))
        self.su, self.sv = float(tile[0]), float(tile[1])

    def sample(self, u, v, lev):
        """Colours at texture coords (u, v in level-0 texels) with fractional mip level ``lev`` (N,)."""
        nlev = len(self.levels)
        lev = np.clip(lev, 0.0, nlev - 1.001)
        l0 = lev.astype(np.int32)
        fr = (lev - l0)[:, None].astype(np.float32)
        out = np.empty((u.shape[0], 3), np.float32)
        for lv in np.unique(l0):
            sel = np.flatnonzero(l0 == lv)
            a = self._bilinear(lv, u[sel], v[sel])
            b = self._bilinear(lv + 1, u[sel], v[sel])
            out[sel] = a + (b - a) * fr[sel]
        return out

    def _bilinear(self, lv, u, v):
        """Bilinear, wrapping lookup in level ``lv`` (cv2.remap on the coordinates packed into rows)."""
        img = self.levels[lv]
        s = img.shape[0]
        k = 1.0 / (1 << lv)
        n = u.shape[0]
        cols = 1024
        rows = -(-n // cols)
        mx = np.zeros(rows * cols, np.float32)
        my = np.zeros(rows * cols, np.float32)
        mx[:n] = np.mod(u * k - 0.5, s)  # wrap first: remap's fixed-point maps saturate at 32767
        my[:n] = np.mod(v * k - 0.5, s)
        out = cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_WRAP)
        return out.reshape(-1, 3)[:n]


# ----------------------------------------------------------------------------------------- geometry
def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _mm(x, m):
    """(N, 3) float32 @ (3, k) small matrix via einsum (numpy's matmul is slow for this shape)."""
    return np.einsum('ij,jk->ik', x, np.asarray(m, np.float32))


_CAM_BASIS = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # columns: right, down, forward
_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                   if np.abs(_CORNERS[i] - _CORNERS[j]).sum() == 2])


@dataclass
class _Group:
    """A rigid body: position (3,) and yaw at time s (seconds) are affine in s (plus optional bob)."""

    pos0: tuple
    vel: tuple = (0.0, 0.0, 0.0)
    yaw: float = 0.0
    bob: float = 0.0  # vertical bob amplitude (pedestrian gait), metres
    bob_freq: float = 1.8
    bob_phase: float = 0.0

    def pose(self, s):
        p = np.array(self.pos0, np.float64) + s * np.array(self.vel, np.float64)
        if self.bob:
            p[1] += self.bob * abs(math.sin(math.pi * self.bob_freq * s + self.bob_phase))
        return _rot_y(self.yaw), p


@dataclass
class _Scene:
    kind: list = field(default_factory=list)     # BOX / ELLIPSOID
    half: list = field(default_factory=list)     # (3,) half extents / radii
    center: list = field(default_factory=list)   # (3,) in the group frame
    yaw: list = field(default_factory=list)      # rotation about Y in the group frame
    group: list = field(default_factory=list)    # 0 = static world
    label: list = field(default_factory=list)
    mats: list = field(default_factory=list)     # material names for faces normal to X, Y, Z
    tint: list = field(default_factory=list)
    groups: list = field(default_factory=lambda: [_Group((0.0, 0.0, 0.0))])

    def add(self, kind, half, center, label, mats, tint=(1.0, 1.0, 1.0), group=0, yaw=0.0):
        if isinstance(mats, str):
            mats = (mats, mats, mats)
        self.kind.append(kind)
        self.half.append(half)
        self.center.append(center)
        self.yaw.append(yaw)
        self.group.append(group)
        self.label.append(label)
        self.mats.append(tuple(mats))
        self.tint.append(tint)

    def new_group(self, g: _Group) -> int:
        self.groups.append(g)
        return len(self.groups) - 1


# ----------------------------------------------------------------------------------------- scene
_CAR_COLORS = ([0.75, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.15, 0.15, 0.15], [0.5, 0.52, 0.55],
               [0.1, 0.4, 0.2], [0.9, 0.7, 0.2], [0.35, 0.2, 0.12])
_SHIRTS = ([0.7, 0.15, 0.15], [0.15, 0.3, 0.7], [0.9, 0.9, 0.85], [0.2, 0.55, 0.3], [0.85, 0.6, 0.1],
           [0.4, 0.2, 0.5], [0.25, 0.25, 0.25])


def _add_car(sc, rng, group):
    """Car in its group frame (origin on the ground at its centre, +Z = heading)."""
    col = _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
    L, W = rng.uniform(3.9, 4.7), rng.uniform(1.7, 1.9)
    sc.add(BOX, (W / 2, 0.38, L / 2), (0.0, 0.72, 0.0), CAR, 'paint', col, group)
    cl = L * rng.uniform(0.45, 0.55)
    sc.add(BOX, (W / 2 - 0.08, 0.3, cl / 2), (0.0, 1.4, -0.15 * L + cl * 0.1), CAR, ('glass', 'paint', 'glass'), col,
           group)
    for sx in (-1, 1):
        for sz in (-1, 1):
            sc.add(BOX, (0.12, 0.32, 0.33), (sx * (W / 2 - 0.1), 0.32, sz * (L / 2 - 0.8)), CAR, 'tyre', (1, 1, 1),
                   group)


def _add_person(sc, rng, group):
    shirt = _SHIRTS[rng.integers(len(_SHIRTS))]
    pants = [0.15, 0.17, 0.3] if rng.random() < 0.6 else [0.3, 0.27, 0.22]
    h = rng.uniform(0.9, 1.1)
    sc.add(BOX, (0.17, 0.42 * h, 0.12), (0.0, 0.42 * h, 0.0), PERSON, 'cloth', pants, group)
    sc.add(BOX, (0.22, 0.32 * h, 0.13), (0.0, 0.84 * h + 0.32 * h, 0.0), PERSON, 'cloth', shirt, group)
    sc.add(ELLIPSOID, (0.1, 0.12, 0.11), (0.0, 1.48 * h + 0.13, 0.0), PERSON, 'skin', (1, 1, 1), group)


def _build_scene(seed, duration, speed):
    """Scene covering camera travel ``speed * duration`` (+ view distance); each object stream has its
    own RNG stream, so a longer scene extends a shorter one with the same seed."""
    sc = _Scene()
    z_end = speed * duration + 260.0
    r = lambda k: np.random.default_rng([seed, k])  # noqa: E731

    for side in (-1, 1):
        # front row of buildings with gaps (terrain, trees, hedges in the gaps)
        rng = r(10 + side)
        z = -40.0
        while z < z_end:
            if rng.random() < 0.3:  # gap
                gl = rng.uniform(6, 18)
                for _ in range(int(gl // 5)):
                    zt = z + rng.uniform(1, gl - 1)
                    _add_tree(sc, rng, side * rng.uniform(10.5, 16.0), zt, scale=rng.uniform(1.0, 1.5))
                z += gl
                continue
            bl, depth = rng.uniform(10, 28), rng.uniform(8, 14)
            setback = SIDEWALK_OUT + rng.uniform(0.5, 3.5)
            hgt = rng.uniform(8, 24)
            sc.add(BOX, (depth / 2, hgt / 2, bl / 2), (side * (setback + depth / 2), hgt / 2, z + bl / 2), BUILDING,
                   f'facade{rng.integers(4)}', tuple(rng.uniform(0.85, 1.1, 3)))
            if rng.random() < 0.35:  # hedge in front of the building
                hl = bl * rng.uniform(0.4, 0.9)
                hh = rng.uniform(0.5, 0.8)
                sc.add(BOX, (0.4, hh, hl / 2), (side * (setback - 0.5), hh, z + bl / 2), VEGETATION, 'leaves')
            z += bl + rng.uniform(0.0, 1.5)
        # back row (closes the view between front buildings)
        rng = r(20 + side)
        z = -60.0
        while z < z_end + 60:
            bl, hgt = rng.uniform(20, 60), rng.uniform(12, 35)
            x0 = rng.uniform(26, 34)
            sc.add(BOX, (8.0, hgt / 2, bl / 2), (side * (x0 + 8.0), hgt / 2, z + bl / 2), BUILDING,
                   f'facade{rng.integers(4)}', tuple(rng.uniform(0.8, 1.05, 3)))
            z += bl
        # street trees on the sidewalk
        rng = r(30 + side)
        z = rng.uniform(0, 15)
        while z < z_end:
            _add_tree(sc, rng, side * rng.uniform(7.9, 8.5), z, scale=rng.uniform(0.8, 1.1))
            z += rng.uniform(9, 22)
        # poles: street lamps, signs, traffic lights
        rng = r(40 + side)
        z = rng.uniform(5, 20)
        while z < z_end:
            x = side * rng.uniform(5.8, 6.1)
            kind = rng.random()
            if kind < 0.45:
                hp = rng.uniform(5, 7)
                sc.add(BOX, (0.08, hp / 2, 0.08), (x, hp / 2, z), POLE, 'metal')
                sc.add(BOX, (0.65, 0.05, 0.1), (x - side * 0.6, hp - 0.05, z), POLE, 'metal')
            elif kind < 0.8:
                sc.add(BOX, (0.05, 1.2, 0.05), (x, 1.2, z), POLE, 'metal')
                sz_ = rng.uniform(0.3, 0.4)
                sc.add(BOX, (sz_, sz_, 0.03), (x, 2.4 + sz_ * 0.7, z - 0.1), SIGN, ('metal', 'metal', 'sign'))
            else:
                sc.add(BOX, (0.07, 1.9, 0.07), (x, 1.9, z), POLE, 'metal')
                sc.add(BOX, (0.16, 0.45, 0.12), (x, 4.2, z - 0.2), LIGHT, ('tlight', 'tlight', 'tlight'),
                       (1, 1, 1))
            z += rng.uniform(12, 30)
        # parked cars
        rng = r(50 + side)
        z = rng.uniform(3, 12)
        while z < z_end:
            if rng.random() < 0.6:
                g = sc.new_group(_Group((side * rng.uniform(4.4, 4.7), 0.0, z), yaw=float(rng.uniform(-0.03, 0.03))))
                _add_car(sc, rng, g)
            z += rng.uniform(5.5, 9.0)
        # pedestrians walking on the sidewalk
        rng = r(60 + side)
        z = rng.uniform(5, 15)
        while z < z_end + 30:
            d = 1 if rng.random() < 0.5 else -1
            v = d * rng.uniform(0.9, 1.6)
            g = sc.new_group(_Group((side * rng.uniform(6.3, 7.6), 0.0, z), (0.0, 0.0, v), 0.0 if d > 0 else math.pi,
                                    bob=0.04, bob_freq=abs(v) * 1.3, bob_phase=float(rng.uniform(0, 3))))
            _add_person(sc, rng, g)
            z += rng.uniform(8, 25)

    rng = r(70)  # lead cars in the ego lane, pulling away slowly
    z = rng.uniform(13, 17)
    for _ in range(3):
        g = sc.new_group(_Group((EGO_X + rng.uniform(-0.15, 0.15), 0.0, z), (0.0, 0.0, speed + rng.uniform(0.8, 2.0))))
        _add_car(sc, rng, g)
        z += rng.uniform(25, 45)
    rng = r(80)  # oncoming cars, parametrised by the time they pass the camera
    tau = rng.uniform(0.5, 2.0) - 30.0 / speed
    while tau < duration + 30:
        v = rng.uniform(7, 11)
        zc = speed * tau
        g = sc.new_group(_Group((-EGO_X + rng.uniform(-0.2, 0.2), 0.0, zc + v * tau), (0.0, 0.0, -v), math.pi))
        _add_car(sc, rng, g)
        tau += rng.uniform(2.0, 6.0)
    rng = r(90)  # pedestrians crossing the road ahead, right to left, before the camera reaches them
    tc = rng.uniform(4.0, 6.0)
    while tc < duration + 10:
        zc = speed * tc
        v = -rng.uniform(1.2, 1.6)
        x_at = -4.5 - rng.uniform(0, 1.0)  # where the walker is when the camera is 6 m before zc
        s_at = tc - 6.0 / speed
        g = sc.new_group(_Group((x_at - v * s_at, 0.0, zc), (v, 0.0, 0.0), -math.pi / 2, bob=0.04,
                                bob_freq=abs(v) * 1.3))
        _add_person(sc, rng, g)
        tc += rng.uniform(6.0, 14.0)
    return sc


def _add_tree(sc, rng, x, z, scale=1.0):
    th = 2.6 * scale
    sc.add(BOX, (0.14 * scale, th / 2, 0.14 * scale), (x, th / 2, z), VEGETATION, 'bark')
    rx, ry = rng.uniform(1.4, 2.1) * scale, rng.uniform(1.5, 2.3) * scale
    sc.add(ELLIPSOID, (rx, ry, rx * rng.uniform(0.85, 1.15)), (x, th + ry * 0.75, z), VEGETATION, 'leaves',
           tuple(rng.uniform(0.85, 1.15, 3)))


# ----------------------------------------------------------------------------------------- renderer
def _check_size(size):
    try:
        w, h = size
        if int(w) != w or int(h) != h:
            raise ValueError
        return int(w), int(h)
    except (TypeError, ValueError):
        raise ConfigError(f'size must be a (width, height) pair of integers, got {size!r}') from None


class SyntheticDrive:
    """Procedural street drive; ``render(t)`` -> (rgb, labels, flow_bwd, flow_fwd) for frame t.

    ``flow_bwd = flow(t, t-1)`` and ``flow_fwd = flow(t, t+1)``, float32 (H, W, 2), exact.
    ``duration_s``: seconds of drive the scene is built for (frames beyond still render, emptier).
    """

    def __init__(self, seed: int = 0, size=(640, 360), fps: float = 10.0, duration_s: float = 60.0,
                 speed: float = 8.0, hfov_deg: float = 80.0):
        w, h = _check_size(size)
        if int(seed) != seed or int(seed) < 0:
            raise ConfigError(f'seed must be a non-negative integer, got {seed}')
        if w < 16 or h < 16 or w > 8192 or h > 8192:
            raise ConfigError(f'synthetic frame size must be within 16..8192 px per side, got {w}x{h}')
        if not (0.5 <= float(fps) <= 240.0):
            raise ConfigError(f'fps must be within 0.5..240, got {fps}')
        if not (0.0 < float(speed) <= 40.0):
            raise ConfigError(f'speed must be within (0, 40] m/s, got {speed}')
        if not (20.0 <= float(hfov_deg) <= 150.0):
            raise ConfigError(f'hfov must be within 20..150 degrees, got {hfov_deg}')
        self.seed, self.size, self.fps, self.speed = int(seed), (w, h), float(fps), float(speed)
        self.duration_s = max(float(duration_s), 1.0)
        self.f = 0.5 * w / math.tan(math.radians(hfov_deg) / 2)
        self.cx, self.cy = (w - 1) / 2.0, (h - 1) / 2.0
        self.K = np.array([[self.f, 0, self.cx], [0, self.f, self.cy], [0, 0, 1.0]])
        rng = np.random.default_rng([self.seed, 1])
        self._cam_phase = rng.uniform(0, 2 * np.pi, 6)
        self._mats = {k: _Material(*v) for k, v in _make_textures(np.random.default_rng([self.seed, 2])).items()}
        self._mat_names = sorted(self._mats)
        self._scene = _build_scene(self.seed, self.duration_s, self.speed)
        sc = self._scene
        self._kind = np.array(sc.kind, np.int8)
        self._half = np.array(sc.half, np.float64)
        self._center = np.array(sc.center, np.float64)
        self._pyaw = np.array(sc.yaw, np.float64)
        self._group = np.array(sc.group, np.int32)
        self._label = np.array(sc.label, np.uint8)
        self._tint = np.array(sc.tint, np.float32)
        self._halff = self._half.astype(np.float32)
        mid = {n: i for i, n in enumerate(self._mat_names)}
        self._matid = np.array([[mid[n] for n in m] for m in sc.mats], np.int64).reshape(-1, 3)
        self._tileface = np.isin(self._matid, [mid['sign'], mid['tlight']])
        xs = np.arange(w, dtype=np.float32)
        ys = np.arange(h, dtype=np.float32)
        self._px, self._py = np.meshgrid(xs, ys)
        self._rays_cam = np.stack([(self._px - self.cx) / self.f, (self._py - self.cy) / self.f,
                                   np.ones_like(self._px)], axis=-1).astype(np.float32)  # z = 1

    # -- poses ---------------------------------------------------------------------------------------
    def camera_pose(self, s: float):
        """(R_wc camera->world rotation (3,3), C camera centre (3,)) at time s (seconds).
        Camera axes: x right, y down, z forward (OpenCV)."""
        p = self._cam_phase
        w1, w2 = 2 * np.pi / 7.0, 2 * np.pi / 9.0
        x = EGO_X + 0.25 * math.sin(w1 * s + p[0])
        dx = 0.25 * w1 * math.cos(w1 * s + p[0])
        y = CAM_HEIGHT + 0.015 * math.sin(2 * np.pi * 1.3 * s + p[1])
        z = self.speed * s
        yaw = math.atan2(dx, self.speed) + 0.025 * math.sin(w2 * s + p[2])
        pitch = 0.035 + 0.004 * math.sin(2 * np.pi * 1.1 * s + p[3])
        roll = 0.004 * math.sin(2 * np.pi * 0.7 * s + p[4])
        R = _rot_y(yaw) @ _rot_x(pitch) @ _CAM_BASIS @ _rot_z(roll)
        return R, np.array([x, y, z])

    def camera_matrix(self, t: int) -> np.ndarray:
        """4x4 camera-to-world transform of frame t."""
        R, C = self.camera_pose(t / self.fps)
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R, C
        return M

    def _prim_transforms(self, s):
        """World rotation (P,3,3) and centre (P,3) of every primitive at time s."""
        gR = np.empty((len(self._scene.groups), 3, 3))
        gT = np.empty((len(self._scene.groups), 3))
        for i, g in enumerate(self._scene.groups):
            gR[i], gT[i] = g.pose(s)
        c, si = np.cos(self._pyaw), np.sin(self._pyaw)
        Rl = np.zeros((len(c), 3, 3))
        Rl[:, 0, 0], Rl[:, 0, 2], Rl[:, 1, 1], Rl[:, 2, 0], Rl[:, 2, 2] = c, si, 1.0, -si, c
        Rg = gR[self._group]
        R = Rg @ Rl
        T = gT[self._group] + np.einsum('pij,pj->pi', Rg, self._center)
        return R, T, gR, gT

    def _screen_rects(self, R, T, Rc, C):
        """Integer pixel rectangles (P, 4: x0, y0, x1, y1) bounding each primitive, clipped at the near
        plane; empty (x1 <= x0) when not visible."""
        w, h = self.size
        corners = np.einsum('pij,pkj->pki', R, _CORNERS[None] * self._half[:, None, :]) + T[:, None, :]
        cam = (corners - C) @ Rc  # (P, 8, 3) camera coords
        z = cam[..., 2]
        a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
        za, zb = a[..., 2], b[..., 2]
        cross = (za - NEAR) * (zb - NEAR) < 0
        tt = np.where(cross, (NEAR - za) / np.where(cross, zb - za, 1.0), 0.0)
        ip = a + (b - a) * tt[..., None]
        pts = np.concatenate([cam, ip], axis=1)
        ok = np.concatenate([z >= NEAR, cross], axis=1)
        zz = np.where(ok, pts[..., 2], 1.0)
        u = np.where(ok, self.f * pts[..., 0] / zz + self.cx, np.nan)
        v = np.where(ok, self.f * pts[..., 1] / zz + self.cy, np.nan)
        anyok = ok.any(axis=1) & (z.min(axis=1) < FAR_CULL)
        with np.errstate(all='ignore'):
            x0 = np.floor(np.nanmin(np.where(anyok[:, None], u, 0), axis=1))
            x1 = np.ceil(np.nanmax(np.where(anyok[:, None], u, 0), axis=1)) + 1
            y0 = np.floor(np.nanmin(np.where(anyok[:, None], v, 0), axis=1))
            y1 = np.ceil(np.nanmax(np.where(anyok[:, None], v, 0), axis=1)) + 1
        rect = np.stack([np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)], 1)
        rect = np.nan_to_num(rect).astype(np.int64)
        rect[~anyok] = 0
        return rect

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, t: int):
        """(rgb uint8 (H,W,3), labels uint8 (H,W), flow_bwd (H,W,2), flow_fwd (H,W,2)) of frame t."""
        d = self.render_layers(t)
        return d['rgb'], d['labels'], d['flow_bwd'], d['flow_fwd']

    def render_layers(self, t: int) -> dict:
        """Frame t with extra layers: 'depth' (camera z, inf for sky), 'owner' (int32 primitive id:
        0 sky, 1 ground, 2+ primitives), 'group' (int32 rigid body id, 0 = static world)."""
        if int(t) != t:
            raise ConfigError(f'frame index must be an integer, got {t}')
        t = int(t)
        w, h = self.size
        s = t / self.fps
        Rc, C = self.camera_pose(s)
        R, T, gR, gT = self._prim_transforms(s)
        dirs = _mm(self._rays_cam.reshape(-1, 3), Rc.T).reshape(h, w, 3)  # world, z_cam = 1

        depth = np.full((h, w), np.inf, np.float32)
        owner = np.zeros((h, w), np.int32)
        face = np.zeros((h, w), np.int8)
        dy = dirs[..., 1]
        g = dy < -1e-6
        tg = np.where(g, -C[1] / np.where(g, dy, -1.0), np.inf).astype(np.float32)
        tg[tg > 1e5] = np.inf
        depth[:] = tg
        owner[np.isfinite(tg)] = GROUND_ID

        rects = self._screen_rects(R, T, Rc, C)
        vis = np.flatnonzero((rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1]))
        dp = np.ascontiguousarray(dirs.transpose(2, 0, 1))  # (3, h, w) planes: cheap rectangular views
        with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
            for p in vis:
                self._draw(p, rects[p], dp, R[p], (C - T[p]) @ R[p], depth, owner, face)
        rgb, labels, prel = self._shade(owner, face, depth, dirs, R, T, C)
        group = np.zeros((h, w), np.int32)
        m = owner >= PRIM0
        group[m] = self._group[owner[m] - PRIM0]
        flow_bwd = self._flow(s, s - 1.0 / self.fps, owner, group, prel, dirs, C, gR, gT)
        flow_fwd = self._flow(s, s + 1.0 / self.fps, owner, group, prel, dirs, C, gR, gT)
        return {'rgb': rgb, 'labels': labels, 'flow_bwd': flow_bwd, 'flow_fwd': flow_fwd, 'depth': depth,
                'owner': owner, 'group': group}

    def _draw(self, p, rect, dp, Rp, o, depth, owner, face):
        """Ray cast primitive p inside its screen rectangle and update the z-buffer (depth/owner/face)."""
        x0, y0, x1, y1 = rect
        dx, dy, dz = dp[0, y0:y1, x0:x1], dp[1, y0:y1, x0:x1], dp[2, y0:y1, x0:x1]
        Rp = Rp.astype(np.float32)
        dl = [dx * Rp[0, j] + dy * Rp[1, j] + dz * Rp[2, j] for j in range(3)]  # ray dirs, primitive frame
        hp = self._half[p]
        if self._kind[p] == BOX:
            tn, tf = [], []
            for j in range(3):
                inv = 1.0 / dl[j]
                ta = np.float32(-hp[j] - o[j]) * inv
                tb = np.float32(hp[j] - o[j]) * inv
                tn.append(np.minimum(ta, tb))
                tf.append(np.maximum(ta, tb))
            te = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
            hit = (np.minimum(np.minimum(tf[0], tf[1]), tf[2]) >= te) & (te > NEAR)
        else:
            ir = (1.0 / hp).astype(np.float32)
            o2 = o * ir
            d2 = [dl[j] * ir[j] for j in range(3)]
            a = d2[0] * d2[0] + d2[1] * d2[1] + d2[2] * d2[2]
            b = d2[0] * o2[0] + d2[1] * o2[1] + d2[2] * o2[2]
            c = np.float32(o2 @ o2 - 1.0)
            disc = b * b - a * c
            te = (-b - np.sqrt(np.maximum(disc, 0))) / a
            hit = (disc > 0) & (te > NEAR)
        sd = depth[y0:y1, x0:x1]
        win = hit & (te < sd)
        if not win.any():
            return
        sd[win] = te[win]
        owner[y0:y1, x0:x1][win] = PRIM0 + p
        if self._kind[p] == BOX:
            tw = te[win]
            ax = np.where(tn[0][win] == tw, 0, np.where(tn[1][win] == tw, 1, 2))
            dsel = np.where(ax == 0, dl[0][win], np.where(ax == 1, dl[1][win], dl[2][win]))
            face[y0:y1, x0:x1][win] = (ax * 2 + (dsel > 0)).astype(np.int8)
        else:
            face[y0:y1, x0:x1][win] = 6

    def _shade(self, owner, face, depth, dirs, R, T, C):
        h, w = owner.shape
        of = owner.reshape(-1)
        ff = face.reshape(-1)
        df = depth.reshape(-1)
        dirf = dirs.reshape(-1, 3)
        rgb = np.zeros((h * w, 3), np.float32)
        labels = np.full(h * w, 255, np.uint8)
        prel = np.zeros((h * w, 3), np.float32)  # point relative to the camera centre (world axes)
        solid = np.flatnonzero(of != SKY_ID)
        prel[solid] = dirf[solid] * df[solid, None]
        dist = np.sqrt((prel[solid] ** 2).sum(1))
        pix_m = np.empty(h * w, np.float32)  # metres per pixel at the surface (before obliquity)
        pix_m[solid] = dist / self.f
        jobs = {}  # material -> list of (idx, u_m, v_m, footprint_m, tint (n,3)|(3,), shade)

        def add(mat, idx, um, vm, fp, tint, shade):
            jobs.setdefault(mat, []).append((idx, um, vm, fp, tint, shade))

        # ground
        gi = np.flatnonzero(of == GROUND_ID)
        if gi.size:
            P = prel[gi] + C.astype(np.float32)
            X, Z = P[:, 0], P[:, 2]
            ax_ = np.abs(X)
            dn = dirf[gi] / np.sqrt((dirf[gi] ** 2).sum(1))[:, None]
            cosg = np.abs(dn[:, 1])
            fp_lat = pix_m[gi]
            fp = fp_lat / np.maximum(cosg, 0.12)
            shade = np.float32(0.55 + 0.45 * max(_SUN[1], 0))
            reg = np.where(ax_ < ROAD_HALF, 0, np.where(ax_ < SIDEWALK_OUT, 1, 2))
            for k, (mat, lab) in enumerate((('asphalt', ROAD), ('sidewalk', SIDEWALK), ('terrain', TERRAIN))):
                sel = reg == k
                if sel.any():
                    add(mat, gi[sel], X[sel], Z[sel], fp[sel], np.ones(3, np.float32), shade)
                    labels[gi[sel]] = lab
            # lane markings (anti-aliased by footprint): dashed centre line, solid lane/road edges
            paint = np.zeros(gi.size, np.float32)
            fpl = np.maximum(fp_lat, 1e-3)
            fpz = np.maximum(fp, 1e-3)
            for xl, wl, dashed in ((0.0, 0.15, True), (-LANE_W, 0.12, False), (LANE_W, 0.12, False)):
                cov = np.clip((wl / 2 - np.abs(X - xl)) / fpl + 0.5, 0, 1)
                if dashed:  # 3 m dashes every 6 m, centred at Z = 1.5 (mod 6)
                    dz = np.abs(np.mod(Z - 1.5 + 3.0, 6.0) - 3.0)
                    cov = cov * np.clip((1.5 - dz) / fpz + 0.5, 0, 1)
                paint = np.maximum(paint, cov)
            paint_job = (gi, paint * (reg == 0))
        else:
            paint_job = None

        # primitives (vectorised over all their pixels)
        prim_px = np.flatnonzero(of >= PRIM0)
        if prim_px.size:
            pid = of[prim_px] - PRIM0
            Rn = R.astype(np.float32)[pid]  # (N, 3, 3) local -> world
            q = prel[prim_px] + (C[None, :] - T).astype(np.float32)[pid]
            lp = np.einsum('ni,nij->nj', q, Rn)  # local point
            hp = self._halff[pid]
            labels[prim_px] = self._label[pid]
            dsub = dirf[prim_px]
            dn = dsub / np.sqrt(np.einsum('ni,ni->n', dsub, dsub))[:, None]
            fcs = ff[prim_px]
            sun = _SUN.astype(np.float32)
            ell = fcs == 6
            bi = np.flatnonzero(~ell)
            if bi.size:
                axis = (fcs[bi] // 2).astype(np.int64)
                sgn = np.where(fcs[bi] % 2 == 1, -1.0, 1.0).astype(np.float32)  # entry face normal sign
                nw = Rn[bi[:, None], np.arange(3)[None, :], axis[:, None]] * sgn[:, None]
                cos = np.abs(np.einsum('ni,ni->n', nw, dn[bi]))
                qb = lp[bi] + hp[bi]
                hb = hp[bi]
                um = np.where(axis == 0, qb[:, 2], qb[:, 0])
                vm = np.where(axis == 1, qb[:, 2], qb[:, 1])
                fp = pix_m[prim_px[bi]] / np.maximum(cos, 0.2)
                tile = self._tileface[pid[bi], axis]
                if tile.any():  # the whole face is one tile (signs, traffic lights)
                    hu = np.where(axis == 0, hb[:, 2], hb[:, 0])
                    hv = np.where(axis == 1, hb[:, 2], hb[:, 1])
                    um = np.where(tile, um / (2 * hu), um)
                    vm = np.where(tile, vm / (2 * hv), vm)
                    fp = np.where(tile, fp / (2 * np.minimum(hu, hv)), fp)
                shade = 0.55 + 0.45 * np.maximum(nw @ sun, 0)
                mats = self._matid[pid[bi], axis]
                tint = self._tint[pid[bi]]
                for mi in np.unique(mats):
                    sel = mats == mi
                    add(self._mat_names[mi], prim_px[bi[sel]], um[sel], vm[sel], fp[sel], tint[sel], shade[sel])
            ei = np.flatnonzero(ell)
            if ei.size:
                he = hp[ei]
                le = lp[ei]
                nl = le / (he * he)
                nl /= np.sqrt(np.einsum('ni,ni->n', nl, nl))[:, None] + 1e-12
                nw = np.einsum('nij,nj->ni', Rn[ei], nl)
                cos = np.abs(np.einsum('ni,ni->n', nw, dn[ei]))
                um = np.arctan2(le[:, 0], -le[:, 2]) * he[:, 0]
                vm = le[:, 1] + he[:, 1]
                shade = 0.55 + 0.45 * np.maximum(nw @ sun, 0)
                fp = pix_m[prim_px[ei]] / np.maximum(cos, 0.2)
                mats = self._matid[pid[ei], 0]
                tint = self._tint[pid[ei]]
                for mi in np.unique(mats):
                    sel = mats == mi
                    add(self._mat_names[mi], prim_px[ei[sel]], um[sel], vm[sel], fp[sel], tint[sel], shade[sel])

        for mat, lst in jobs.items():
            m = self._mats[mat]
            idx = np.concatenate([j[0] for j in lst])
            um = np.concatenate([np.asarray(j[1], np.float32) for j in lst])
            vm = np.concatenate([np.asarray(j[2], np.float32) for j in lst])
            fp = np.concatenate([np.asarray(j[3], np.float32) for j in lst])
            tint = np.concatenate([np.broadcast_to(np.asarray(j[4], np.float32), (len(j[0]), 3)) for j in lst])
            shade = np.concatenate([np.broadcast_to(np.asarray(j[5], np.float32), (len(j[0]),)) for j in lst])
            su = TEX / m.su
            sv = TEX / m.sv
            lev = np.log2(np.maximum(fp * max(su, sv), 1.0))
            col = m.sample(um * su, -vm * sv, lev)  # -v: texture rows run downwards
            rgb[idx] = col * tint * shade[:, None]
        if paint_job is not None:
            gi, paint = paint_job
            rgb[gi] = rgb[gi] * (1 - paint[:, None]) + np.float32(0.9) * paint[:, None]
        # haze by distance
        hz = (1.0 - np.exp(-dist / HAZE_M)).astype(np.float32)[:, None]
        rgb[solid] = rgb[solid] * (1 - hz) + _HAZE * hz
        # sky: gradient + clouds, a function of the world direction only
        si = np.flatnonzero(of == SKY_ID)
        if si.size:
            dn = dirf[si] / np.sqrt((dirf[si] ** 2).sum(1))[:, None]
            el = np.arcsin(np.clip(dn[:, 1], -1, 1))
            az = np.arctan2(dn[:, 0], dn[:, 2])
            m = self._mats['clouds']
            tile = 2 * np.pi / 12  # radians per tile horizontally
            scale = TEX / tile
            lev = np.full(si.size, math.log2(max(scale / self.f, 1.0)), np.float32)
            cl = m.sample((az * scale).astype(np.float32), (-el * scale * 2.0).astype(np.float32), lev + 1.0)[:, 0]
            e = np.clip(el / 0.6, 0, 1)[:, None].astype(np.float32)
            base = np.float32([0.75, 0.84, 0.95]) * (1 - e) + np.float32([0.35, 0.55, 0.85]) * e
            cw = (cl * np.clip(el * 8 + 0.3, 0, 1))[:, None].astype(np.float32)
            rgb[si] = base * (1 - cw) + np.float32([0.97, 0.97, 0.98]) * cw
            labels[si] = SKY
        out = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)
        return out, labels.reshape(h, w), prel.reshape(h, w, 3)

    def _flow(self, s, s2, owner, group, prel, dirs, C, gR, gT):
        """Exact flow from frame time s to s2 on s's grid."""
        h, w = owner.shape
        R2, C2 = self.camera_pose(s2)
        of = owner.reshape(-1)
        gf = group.reshape(-1)
        pts = prel.reshape(-1, 3).copy()
        solid = of != SKY_ID
        # static world: P2 - C2 = P - C + (C - C2)
        pts[solid] += (C - C2).astype(np.float32)
        mov = np.flatnonzero(gf > 0)
        if mov.size:
            order = np.argsort(gf[mov], kind='stable')
            mp = mov[order]
            ids = gf[mp]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            ends = np.r_[starts[1:], ids.size]
            pr = prel.reshape(-1, 3)
            for a, b in zip(starts, ends):
                gidx = int(ids[a])
                sel = mp[a:b]
                Ra, Ta = gR[gidx], gT[gidx]
                Rb, Tb = self._scene.groups[gidx].pose(s2)
                Rrel = Rb @ Ra.T
                # P2 = Rrel (P - Ta) + Tb  with P = prel + C
                q = pr[sel] + (C - Ta).astype(np.float32)
                pts[sel] = _mm(q, Rrel.T) + (Tb - C2).astype(np.float32)
        sky = ~solid
        pts[sky] = dirs.reshape(-1, 3)[sky]  # direction: rotation only
        cam = _mm(pts, R2)
        z = np.maximum(cam[:, 2], 1e-3)
        u = self.f * cam[:, 0] / z + self.cx
        v = self.f * cam[:, 1] / z + self.cy
        flow = np.empty((h * w, 2), np.float32)
        flow[:, 0] = u - self._px.reshape(-1)
        flow[:, 1] = v - self._py.reshape(-1)
        return flow.reshape(h, w, 2)

    def meta(self, frames: int) -> dict:
        """Metadata for ``frames`` frames: size, fps, seed, intrinsics, camera-to-world poses."""
        return {
            'generator': 'vidseg_ros.core.synth', 'version': 1,
            'size': list(self.size), 'fps': self.fps, 'seed': self.seed, 'frames': int(frames),
            'speed_mps': self.speed,
            'class_set': CITYSCAPES.name, 'class_names': list(CITYSCAPES.names),
            'classes_used': [int(c) for c in SCENE_CLASSES],
            'ignore_index': 255,
            'intrinsics': {'fx': self.f, 'fy': self.f, 'cx': self.cx, 'cy': self.cy, 'K': self.K.tolist()},
            'camera_convention': 'camera-to-world 4x4; camera x right, y down, z forward; world X right, '
                                 'Y up, Z forward along the road; pixel coords are pixel indices',
            'flow_convention': 'flow_bwd/t.flo = flow(t, t-1), flow_fwd/t.flo = flow(t, t+1); '
                               'a(x) ~= b(x + flow(x))',
            'poses_cam_to_world': [self.camera_matrix(t).tolist() for t in range(int(frames))],
        }


# ----------------------------------------------------------------------------------------- output
def _write_png(path, img):
    if not cv2.imwrite(str(path), img):
        raise InputError(f'cannot write {path}')


def generate_drive(out_dir, frames: int = 60, size=(640, 360), fps: float = 10.0, seed: int = 0,
                   progress: bool = True, video: bool = False) -> Path:
    """Render a drive into ``out_dir`` (images/, labels/, flow_bwd/, flow_fwd/, meta.json[, drive.mp4])."""
    frames = int(frames)
    if frames < 1 or frames > 100000:
        raise ConfigError(f'frames must be within 1..100000, got {frames}')
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f'output path exists and is not a directory: {out}')
    drive = SyntheticDrive(seed=seed, size=size, fps=fps, duration_s=max(60.0, frames / float(fps)))
    if write_flo is None:  # pragma: no cover
        raise InputError('vidseg_ros.core.flow (write_flo) is not available')
    for sub in ('images', 'labels', 'flow_bwd', 'flow_fwd'):
        (out / sub).mkdir(parents=True, exist_ok=True)
    writer = None
    if video:
        writer = cv2.VideoWriter(str(out / 'drive.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), float(fps), drive.size)
        if not writer.isOpened():
            raise InputError(f'cannot open an mp4 video writer for {out / "drive.mp4"}')
    it = range(frames)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc='synth', unit='frame')
    try:
        for t in it:
            rgb, lab, fb, ff = drive.render(t)
            name = f'{t:06d}'
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            _write_png(out / 'images' / f'{name}.png', bgr)
            _write_png(out / 'labels' / f'{name}.png', lab)
            if t > 0:
                write_flo(out / 'flow_bwd' / f'{name}.flo', fb)
            if t < frames - 1:
                write_flo(out / 'flow_fwd' / f'{name}.flo', ff)
            if writer is not None:
                writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    meta = drive.meta(frames)  # no timings in it: same seed -> byte-identical output
    meta['layout'] = {'images': 'images/%06d.png (RGB)', 'labels': 'labels/%06d.png (uint8 train ids)',
                      'flow_bwd': 'flow_bwd/%06d.flo (frame 0 absent)',
                      'flow_fwd': 'flow_fwd/%06d.flo (last frame absent)'}
    if video:
        meta['video'] = 'drive.mp4'
    (out / 'meta.json').write_text(json.dumps(meta, indent=1))
    return out


def _parse_size(text: str):
    try:
        w, h = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH (e.g. 640x360), got {text!r}') from None
    return w, h


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog='vidseg synth',
                                          description='Render a synthetic drive with exact labels and flow.')
    p.add_argument('--out', required=True, help='output directory')
    p.add_argument('--frames', type=int, default=60, help='number of frames (default 60)')
    p.add_argument('--size', type=_parse_size, default=(640, 360), help='WxH (default 640x360)')
    p.add_argument('--fps', type=float, default=10.0, help='frame rate (default 10)')
    p.add_argument('--seed', type=int, default=0, help='scene seed (default 0)')
    p.add_argument('--video', action='store_true', help='also write drive.mp4')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def cli_main(argv: list[str]) -> int:
    """``vidseg synth`` entry point; raises VidsegError on bad values (the CLI prints ``error: ...``)."""
    args = build_parser().parse_args(argv)
    out = generate_drive(args.out, frames=args.frames, size=args.size, fps=args.fps, seed=args.seed,
                         progress=not args.quiet, video=args.video)
    print(f'wrote {args.frames} frames to {out}')
    return 0
