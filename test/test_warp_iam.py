"""Warping (EVS eq. 1-2) and the inconsistency attention mask (eq. 3-4) on constructed flows."""
import numpy as np
import pytest
import torch

from vidseg_ros.core.errors import ConfigError, InputError
from vidseg_ros.core.iam import blend, flow_inconsistency, inconsistency_mask, inconsistent_fraction
from vidseg_ros.core.warp import make_remap, warp_features, warp_image, warp_labels, warp_probs

H, W = 60, 80


def const_flow(dx, dy, h=H, w=W):
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def test_warp_labels_translation_and_out_of_frame():
    lab = (np.arange(W, dtype=np.uint8)[None, :] % 7).repeat(H, 0)
    out = warp_labels(lab, const_flow(-3, 0))  # t(x) = t-1(x - 3): content moved right by 3
    np.testing.assert_array_equal(out[:, 3:], lab[:, :-3])
    assert (out[:, :3] == 255).all()
    out2 = warp_labels(lab, const_flow(2, 1))
    np.testing.assert_array_equal(out2[:-1, :-2], lab[1:, 2:])
    assert (out2[-1] == 255).all() and (out2[:, -2:] == 255).all()


def test_warp_probs_float_uint8_and_resolution():
    rng = np.random.default_rng(0)
    p = rng.random((20, H, W)).astype(np.float32)
    out = warp_probs(p, const_flow(-2, -1))
    assert out.shape == p.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1:, 2:], p[:, :-1, :-2], atol=1e-5)
    np.testing.assert_allclose(out[:, 5:, 0], p[:, 4:-1, 0], atol=1e-5)  # border replicate
    q = (p * 255).astype(np.uint8)
    oq = warp_probs(q, const_flow(-2, -1))
    assert oq.dtype == np.uint8
    np.testing.assert_array_equal(oq[:, 1:, 2:], q[:, :-1, :-2])
    # half-pixel shift is bilinear
    half = warp_probs(p[:1], const_flow(0.5, 0))
    np.testing.assert_allclose(half[0, :, :-1], 0.5 * (p[0, :, :-1] + p[0, :, 1:]), atol=1e-4)
    # flow at half resolution: values rescaled to the data's grid (-2 px at half size = -4 px here)
    out_lr = warp_probs(p, const_flow(-2, 0, H // 2, W // 2))
    np.testing.assert_allclose(out_lr[:, :, 4:], p[:, :, :-4], atol=1e-5)


def test_remap_reuse_and_size_mismatch():
    f = const_flow(-3, 0)
    rm = make_remap(f)
    lab = np.full((H, W), 4, np.uint8)
    np.testing.assert_array_equal(warp_labels(lab, rm), warp_labels(lab, f))
    with pytest.raises(InputError):
        warp_labels(np.zeros((H // 2, W // 2), np.uint8), rm)
    with pytest.raises(InputError):
        warp_probs(np.zeros((2, 3, H, W), np.float32), f)


@pytest.mark.parametrize('shape,size', [((128, 256), (1024, 512)), ((17, 23), (100, 61)), ((8, 8), (9, 30)),
                                        ((32, 64), (256, 128)), ((128, 256), (256, 128)), ((10, 10), None)])
def test_make_remap_equals_resized_flow_plus_grid(shape, size):
    """make_remap's upsampling shortcut (coordinates resized once, borders corrected) builds the same
    maps as resizing the flow and adding the grid, borders included; downsampling takes the latter."""
    from vidseg_ros.core.flow import flow_to_map, resize_flow
    f = (np.random.default_rng(3).standard_normal(shape + (2,)) * 7).astype(np.float32)
    rm = make_remap(f, size)
    mx, my = flow_to_map(resize_flow(f, size or shape[::-1]))
    assert rm.map_x.shape == mx.shape and rm.map_x.dtype == np.float32 and rm.map_x.flags['C_CONTIGUOUS']
    np.testing.assert_allclose(rm.map_x, mx, atol=5e-4)
    np.testing.assert_allclose(rm.map_y, my, atol=5e-4)


def test_warp_features_matches_remap():
    rng = np.random.default_rng(1)
    feat = rng.random((2, 5, H // 4, W // 4)).astype(np.float32)
    f = const_flow(-4.0, 2.0)  # full-res flow: -1, +0.5 px at 1/4 size
    out = warp_features(torch.from_numpy(feat), f)
    assert isinstance(out, torch.Tensor) and out.shape == feat.shape
    ref = np.stack([warp_probs(feat[b], f) for b in range(2)])
    np.testing.assert_allclose(out.numpy()[:, :, 1:-2, 1:-1], ref[:, :, 1:-2, 1:-1], atol=1e-4)
    out_np = warp_features(feat[0], f)
    assert isinstance(out_np, np.ndarray) and out_np.shape == feat[0].shape


def test_warp_image():
    img = np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)
    out = warp_image(img, const_flow(1, 0))
    np.testing.assert_array_equal(out[:, :-1], img[:, 1:])


def moving_square(d=4, size=20, x0=20, y0=20):
    """Square moving right by d px between t-1 and t over a static background; exact flows."""
    lab_prev = np.zeros((H, W), np.uint8)
    lab_prev[y0:y0 + size, x0:x0 + size] = 1
    f_bwd = np.zeros((H, W, 2), np.float32)      # on t's grid
    f_bwd[y0:y0 + size, x0 + d:x0 + d + size, 0] = -d
    f_fwd = np.zeros((H, W, 2), np.float32)      # on t-1's grid
    f_fwd[y0:y0 + size, x0:x0 + size, 0] = d
    return lab_prev, f_bwd, f_fwd


def test_iam_moving_square_flags_occlusions():
    d, size, x0, y0 = 4, 20, 20, 20
    lab_prev, f_bwd, f_fwd = moving_square(d, size, x0, y0)
    rows = slice(y0 + 2, y0 + size - 2)
    occluded = (rows, slice(x0 + size, x0 + size + d))      # background covered at t (leading edge)
    disoccluded = (rows, slice(x0, x0 + d))                 # background revealed at t (trailing edge)
    far = (slice(0, 10), slice(0, 10))
    inside = (rows, slice(x0 + d + 2, x0 + size - 2))
    m_lab = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=1, blur=0, mode='labels')
    m_flow = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=1, blur=0, mode='flow',
                                thr=1.0)
    m = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=1, blur=0, mode='both', thr=1.0)
    assert m.dtype == np.float32 and m.shape == (H, W)
    assert (m_lab[occluded] == 1).all()
    assert (m_flow[disoccluded] == 1).all()
    assert (m[occluded] == 1).all() and (m[disoccluded] == 1).all()
    assert (m[far] == 0).all() and (m[inside] == 0).all()
    # the warped labels really are wrong in the disoccluded band, right elsewhere
    warped = warp_labels(lab_prev, f_bwd)
    assert (warped[disoccluded] == 1).all() and (warped[inside] == 1).all()
    # dilation + blur give a soft mask in [0, 1] covering more pixels
    soft = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=5, blur=1.5)
    assert soft.min() >= 0 and soft.max() <= 1
    assert inconsistent_fraction(soft) > inconsistent_fraction(m) > 0


def test_iam_at_half_resolution_matches_full_resolution():
    """``scale=2`` (the Propagator's default) runs the checks at half size: same output size, the same
    occlusion band flagged, the mask differing from the full-resolution one only along its edges."""
    d, size, x0, y0 = 4, 20, 20, 20
    lab_prev, f_bwd, f_fwd = moving_square(d, size, x0, y0)
    full = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=5, blur=2.0)
    half = inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, dilate=5, blur=2.0, scale=2)
    assert half.shape == full.shape == (H, W) and half.dtype == np.float32
    rows = slice(y0 + 2, y0 + size - 2)
    assert (half[rows, x0 + size:x0 + size + d] > 0.5).all()          # the occluded band
    a, b = full > 0.5, half > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.6 and np.abs(full - half).mean() < 0.05
    with pytest.raises(ConfigError, match='scale'):
        inconsistency_mask(lab_prev, flow_bwd=f_bwd, flow_fwd=f_fwd, scale=0)


def test_iam_pure_translation_is_consistent_inside():
    rng = np.random.default_rng(3)
    lab_prev = rng.integers(0, 5, (H, W)).astype(np.uint8)
    for mode in ('labels', 'flow', 'both'):
        m = inconsistency_mask(lab_prev, flow_bwd=const_flow(-3, -2), flow_fwd=const_flow(3, 2),
                               dilate=1, blur=0, mode=mode)
        assert m[4:, 5:].max() == 0, mode          # pixels whose source is in the frame
        assert (m[:, :3] == 1).all() and (m[:2] == 1).all(), mode  # entering the view
    # flows at half resolution, labels at full: same result
    m = inconsistency_mask(lab_prev, flow_bwd=const_flow(-1.5, -1, H // 2, W // 2),
                           flow_fwd=const_flow(1.5, 1, H // 2, W // 2), dilate=1, blur=0)
    assert m.shape == (H, W) and m[4:, 5:].max() == 0


def test_flow_inconsistency_threshold_and_errors():
    bad = flow_inconsistency(const_flow(-1, 0), const_flow(1.5, 0), thr=1.0, rel=0.0)  # |err| 0.5
    assert not bad[:, 2:].any()
    bad = flow_inconsistency(const_flow(-1, 0), const_flow(3.0, 0), thr=1.0, rel=0.0)
    assert bad[:, 2:].all()
    with pytest.raises(ConfigError):
        inconsistency_mask(None, flow_bwd=const_flow(0, 0), flow_fwd=const_flow(0, 0), mode='magic')
    with pytest.raises(InputError):
        inconsistency_mask(None, flow_bwd=const_flow(0, 0), flow_fwd=const_flow(0, 0), mode='labels')
    with pytest.raises(TypeError):  # flows are keyword-only so they cannot be swapped silently
        inconsistency_mask(np.zeros((H, W), np.uint8), const_flow(0, 0), const_flow(0, 0))


def test_blend():
    m = np.zeros((H, W), np.float32)
    m[:, :10] = 1
    m[:, 10:20] = 0.25
    pr = np.full((3, H, W), 0.8, np.float32)
    pw = np.full((3, H, W), 0.4, np.float32)
    b = blend(m, pr, pw)
    np.testing.assert_allclose(b[:, :, :10], 0.8)
    np.testing.assert_allclose(b[:, :, 10:20], 0.5)
    np.testing.assert_allclose(b[:, :, 20:], 0.4)
    np.testing.assert_allclose(blend(np.full((H, W), 0.5, np.float32), pr, pw), 0.6, atol=1e-6)  # dense path
    bq = blend(m, (pr * 255).astype(np.uint8), (pw * 255).astype(np.uint8))
    assert bq.dtype == np.float32 and abs(bq[0, 0, 30] - 102 / 255) < 1e-6
    with pytest.raises(InputError):
        blend(m, pr, pw[:, :10])
