"""Propagator: keyframes, warping, holding, IAM, refinement, late keyframes, bounded buffers."""
import numpy as np
import pytest

from vidseg_ros.core.errors import InputError
from vidseg_ros.core.propagation import (PROB_FACTOR, LowResNetworkRefiner, Propagator, Semantics,
                                         dequantize_probs, prob_size, quantize_probs,
                                         semantics_from_probs)

W, H, K = 64, 32, 4


def make_sem(shift=0):
    """Stripes of classes 0..3 (8 px wide blocks), probabilities mostly on the stripe class."""
    xs = (np.arange(W) + shift) // 8 % K
    labels = np.broadcast_to(xs[None, :], (H, W)).astype(np.uint8)
    onehot = (np.arange(K)[:, None, None] == labels[None]).astype(np.float32) * 0.7 + 0.075
    return semantics_from_probs(onehot, np.arange(K), (W, H), labels=labels)


def shift_flows(dx):
    """Scene moves right by dx px per frame: bwd flow(t, t-1) = -dx, fwd flow(t-1, t) = +dx."""
    bwd = np.zeros((H, W, 2), np.float32)
    bwd[..., 0] = -dx
    return bwd, -bwd


def test_semantics_representation():
    sem = make_sem()
    assert sem.labels.shape == (H, W) and sem.labels.dtype == np.uint8
    assert sem.probs.shape == (K, H // PROB_FACTOR, W // PROB_FACTOR) and sem.probs.dtype == np.uint8
    assert prob_size((1024, 512)) == (256, 128) and prob_size((10, 5)) == (3, 2)
    p = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    assert np.abs(dequantize_probs(quantize_probs(p)) - p).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(InputError, match='uint8'):
        Semantics(sem.labels, sem.probs.astype(np.float32))
    with pytest.raises(InputError, match='class_map'):
        Semantics(sem.labels, sem.probs, np.arange(K + 1))


def test_no_keyframe_yet_outputs_ignore():
    prop = Propagator()
    out = prop.step(0, image=np.zeros((H, W, 3), np.uint8))
    assert out.labels.shape == (H, W) and (out.labels == 255).all()
    assert out.degraded and out.distance == -1 and not out.is_keyframe
    assert (out.confidence == 0).all()
    assert prop.stats['degraded_frames'] == 1 and prop.stats['frames'] == 1


def test_keyframe_then_warp_follows_motion():
    prop = Propagator(use_iam=True)
    assert prop.set_keyframe(0, make_sem()) == 'pending'
    out = prop.step(0)
    assert out.is_keyframe and out.distance == 0 and not out.degraded
    assert np.array_equal(out.labels, make_sem().labels)
    for t in range(1, 4):
        out = prop.step(t, *shift_flows(2))
        assert out.distance == t and not out.is_keyframe
        # scene moved right by 2t px: frame t pixel x shows frame-0 pixel x - 2t
        assert np.array_equal(out.labels[:, 2 * t:], make_sem(-2 * t).labels[:, 2 * t:])
        assert out.labels[:, :2 * t].max() < K       # entering border filled from warped probs
    assert out.inconsistent_fraction < 0.2
    # confidence decays with distance from the keyframe
    c0 = make_sem().max_prob().mean()
    assert out.confidence[:, 8:].mean() < c0
    with pytest.raises(InputError, match='increase'):
        prop.step(3, *shift_flows(2))


def test_hold_mode_copies_labels():
    prop = Propagator(warp=False)
    prop.set_keyframe(0, make_sem())
    prop.step(0)
    for t in range(1, 5):
        out = prop.step(t, *shift_flows(3))
        assert np.array_equal(out.labels, make_sem().labels) and out.distance == t and not out.degraded


def test_missing_flow_in_warp_mode_is_degraded():
    prop = Propagator()
    prop.set_keyframe(0, make_sem())
    prop.step(0)
    out = prop.step(1, None)
    assert out.degraded and np.array_equal(out.labels, make_sem().labels)
    out = prop.step(2, *shift_flows(1))
    assert out.degraded                              # stays degraded until the next keyframe
    prop.set_keyframe(3, make_sem())
    assert not prop.step(3, *shift_flows(1)).degraded


def _frames(n, rng):
    """Random-ish per-frame flows (sub-pixel, varying) so warps interpolate."""
    out = []
    for _ in range(n):
        bwd = np.zeros((H // 2, W // 2, 2), np.float32)  # native (half-res) flow, resized inside
        bwd[..., 0] = rng.uniform(-2, 0.5)
        bwd[..., 1] = rng.uniform(-0.5, 0.5)
        bwd += rng.normal(0, 0.3, bwd.shape).astype(np.float32)
        fwd = -bwd + rng.normal(0, 0.2, bwd.shape).astype(np.float32)
        out.append((bwd, fwd, rng.integers(0, 255, (H, W, 3), dtype=np.uint8)))
    return out


class ConstRefiner:
    """Refiner stub: all probability on class ``cls`` (records calls)."""

    def __init__(self, cls=3):
        self.cls, self.calls = cls, 0

    def __call__(self, image, warped, mask):
        assert image.shape == (H, W, 3) and mask.shape == (H, W)
        self.calls += 1
        p = np.zeros(warped.probs.shape, np.float32)
        p[self.cls] = 1.0
        return p


@pytest.mark.parametrize('refine', [False, True])
def test_late_keyframe_catch_up_equals_in_order(refine):
    frames = _frames(8, np.random.default_rng(1))
    kw = dict(history=10, refiner=ConstRefiner() if refine else None)
    a = Propagator(**kw)
    a.set_keyframe(0, make_sem())
    outs_a = [a.step(0, image=frames[0][2])]
    for t in range(1, 8):
        b_, f_, img = frames[t]
        outs_a.append(a.step(t, b_, f_, img))
    b = Propagator(**kw)
    outs_b = [b.step(0, image=frames[0][2])]
    for t in range(1, 6):
        b_, f_, img = frames[t]
        outs_b.append(b.step(t, b_, f_, img))
    assert all((o.labels == 255).all() for o in outs_b)
    assert b.set_keyframe(0, make_sem()) == 'late'
    assert b.stats['late_keyframes'] == 1 and b.stats['repropagated_steps'] == 5
    cur = b.current_output()
    assert cur.distance == 5 and cur.keyframe_id == 0
    assert np.array_equal(cur.labels, outs_a[5].labels)
    assert np.array_equal(cur.semantics.probs, outs_a[5].semantics.probs)
    for t in range(6, 8):
        b_, f_, img = frames[t]
        ob = b.step(t, b_, f_, img)
        assert np.array_equal(ob.labels, outs_a[t].labels)
        assert np.array_equal(ob.confidence, outs_a[t].confidence)
        assert ob.inconsistent_fraction == outs_a[t].inconsistent_fraction
    if refine:
        assert a.stats['refined_frames'] > 0
    # labels actually changed along the way (the test is not trivially equal)
    assert not np.array_equal(outs_a[7].labels, make_sem().labels)


def test_late_keyframe_replaces_older_keyframe():
    frames = _frames(6, np.random.default_rng(2))
    ref = Propagator()
    ref.set_keyframe(0, make_sem())
    ref.step(0)
    for t in range(1, 6):
        if t == 3:
            ref.set_keyframe(3, make_sem(5))
        ref.step(t, *frames[t][:2])
    late = Propagator()
    late.set_keyframe(0, make_sem())
    late.step(0)
    for t in range(1, 6):
        late.step(t, *frames[t][:2])
    assert late.set_keyframe(3, make_sem(5)) == 'late'
    assert np.array_equal(late.semantics.labels, ref.semantics.labels)
    assert late.distance == 2 and late.keyframe_id == 3
    assert late.set_keyframe(1, make_sem()) == 'stale'
    assert late.stats['stale_keyframes'] == 1


def test_bounded_history_and_counters():
    frames = _frames(10, np.random.default_rng(3))
    prop = Propagator(history=3)
    for t in range(10):
        prop.step(t, *frames[t][:2])
        assert len(prop._hist) <= 3
    assert prop.stats['degraded_frames'] == 10
    # keyframe 2 is older than the buffer and no state exists: adopted, degraded, counted
    assert prop.set_keyframe(2, make_sem()) == 'partial'
    assert prop.stats['dropped_keyframes_too_old'] == 1
    out = prop.step(10, *frames[1][:2])
    assert out.degraded and out.labels.max() < 255
    # a state now exists: an unbridgeable late keyframe is dropped
    prop.step(11, *frames[2][:2])
    prop.step(12, *frames[3][:2])
    prop.step(13, *frames[4][:2])
    assert prop.set_keyframe(5, make_sem()) == 'dropped'
    assert prop.stats['dropped_keyframes_too_old'] == 2
    # a keyframe that can be bridged clears the degraded flag
    assert prop.set_keyframe(12, make_sem()) == 'late'
    assert not prop.step(14, *frames[5][:2]).degraded
    # pending keyframes for frames that never get stepped are orphaned
    prop.set_keyframe(15, make_sem())
    prop.step(16, *frames[6][:2])
    assert prop.stats['orphan_keyframes'] == 1
    assert prop.stats['frames'] == 16 and prop.stats['keyframes'] == 4
    prop.reset()
    assert prop.stats['frames'] == 0 and prop.semantics is None


def test_refiner_repairs_inconsistent_region():
    prop = Propagator(refiner=ConstRefiner(cls=3), iam_params={'dilate': 3, 'blur': 0.0})
    prop.set_keyframe(0, make_sem())
    prop.step(0, image=np.zeros((H, W, 3), np.uint8))
    bwd, fwd = shift_flows(2)
    fwd[:, 16:32, 0] = -6.0                  # forward flow disagrees on columns 16..31
    out = prop.step(1, bwd, fwd, np.zeros((H, W, 3), np.uint8))
    assert out.mask is not None and 0.1 < out.inconsistent_fraction < 0.9
    bad = out.mask > 0.5
    # refined labels come from the blended probabilities at 1/4 resolution: (almost) all flagged
    # pixels take the refiner's class
    assert (out.labels[bad] == 3).mean() > 0.9
    assert (out.confidence[bad] < 0.5).all()
    good = ~bad
    assert np.array_equal(out.labels[good][out.labels[good] != 3],
                          make_sem(-2).labels[good][out.labels[good] != 3])
    assert prop.stats['refined_frames'] == 1


def test_low_res_network_refiner_with_stub_model():
    class Stub:
        def segment(self, rgb):
            assert rgb.shape == (8, 16, 3)
            p = np.zeros((K, 8, 16), np.float32)
            p[1] = 1.0
            return type('S', (), {'probs': p, 'labels': np.ones((8, 16), np.uint8)})()
    ref = LowResNetworkRefiner(Stub(), input_size=(16, 8))
    sem = make_sem()
    out = ref(np.zeros((H, W, 3), np.uint8), sem, np.zeros((H, W), np.float32))
    assert out.shape == sem.probs.shape and np.allclose(out[1], 1.0) and ref.calls == 1
