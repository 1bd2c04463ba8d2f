"""Learned temporal modules (issue 4): forward passes, one training step each, the IAM blend of the
refiner, the Propagator integration and exact feature caching on keyframes."""
import numpy as np
import pytest
import torch

from vidseg_ros.core.errors import ConfigError, InputError, ModelError
from vidseg_ros.core.iam import blend
from vidseg_ros.core.propagation import Semantics, quantize_probs
from vidseg_ros.core.temporal import (LEARNED, TemporalPropagator, apply_refinement, build_net,
                                      load_net, make_temporal_module, save_net)

K, W, H = 20, 64, 32          # working size 64x32 -> probability grid 16x8
WP, HP = 16, 8


def _rng(seed=0):
    return np.random.default_rng(seed)


def _probs(rng, k=K, h=HP, w=WP):
    p = rng.random((k, h, w)).astype(np.float32) ** 4
    return p / p.sum(0, keepdims=True)


def _semantics(rng):
    p = _probs(rng)
    labels = np.argmax(np.repeat(np.repeat(p, 4, 1), 4, 2), 0).astype(np.uint8)
    cm = np.array(list(range(19)) + [255], np.uint8)
    return Semantics(cm[labels], quantize_probs(p), cm)


def _image(rng, w=W, h=H):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _randomise_head(net, scale=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * 0.1)


class FakeCheap:
    def __init__(self, seed=3):
        self.rng = _rng(seed)

    def __call__(self, image, size_wh):
        return _probs(self.rng, K, size_wh[1], size_wh[0])


def test_refiner_shapes_and_iam_blend():
    from vidseg_ros.core.refiner import EVSRefiner, RefinerNet
    rng = _rng()
    sem, img = _semantics(rng), _image(rng)
    mask = np.zeros((H, W), np.float32)
    mask[8:24, 16:48] = 1.0
    net = RefinerNet(K)
    ref = EVSRefiner(net)
    # untrained: the residual head is zero -> P_ref is the (clamped, renormalised) warped probs
    p0 = ref(img, sem, mask)
    assert p0.shape == (K, HP, WP) and p0.dtype == np.float32
    wp = sem.probs.astype(np.float32) / 255
    assert np.abs(p0 - np.maximum(wp, 1e-3) / np.maximum(wp, 1e-3).sum(0)).max() < 1e-5
    _randomise_head(net, 5.0)
    p_ref = ref(img, sem, mask)
    assert np.abs(p_ref - p0).max() > 1e-3          # the head does something
    np.testing.assert_allclose(p_ref.sum(0), 1.0, atol=1e-5)
    out, region = ref.refine(img, sem, mask)
    m_small = region
    assert m_small.shape == (HP, WP)
    # eq. 4: M * P_ref + (1 - M) * P_warp with the IAM at the probability grid
    np.testing.assert_allclose(out, blend(m_small, p_ref, sem.probs), atol=1e-5)
    outside = m_small == 0
    assert outside.any() and (m_small == 1).any()
    np.testing.assert_allclose(out[:, outside], wp[:, outside], atol=1e-6)
    np.testing.assert_allclose(out[:, m_small == 1], p_ref[:, m_small == 1], atol=1e-6)
    with pytest.raises(InputError):
        ref(None, sem, mask)
    with pytest.raises(InputError):
        ref(img, Semantics(sem.labels), mask)


def test_grfp_forward():
    from vidseg_ros.core.grfp import STGRU, STGRURefiner
    rng = _rng(1)
    sem, img, prev = _semantics(rng), _image(rng), _image(rng)
    net = STGRU(K)
    mod = STGRURefiner(net, FakeCheap())
    flow = np.zeros((H // 4, W // 4, 2), np.float32)
    p, region = mod.refine(img, sem, None, prev_image=prev, flow_bwd=flow)
    assert p.shape == (K, HP, WP) and region.shape == (HP, WP)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    # a closed update gate keeps the warped state (h = lambda * w); an open one takes the cheap pass
    closed = STGRURefiner(STGRU(K, z_bias=-30.0), FakeCheap())
    pc, reg_c = closed.refine(img, sem, None, prev_image=prev, flow_bwd=flow)
    wq = np.maximum(sem.probs.astype(np.float32) / 255, 1e-3)
    np.testing.assert_allclose(pc, wq / wq.sum(0), atol=1e-4)
    assert not reg_c.any()
    assert np.abs(p - pc).max() > 1e-3
    p2, _ = mod.refine(img, sem, None)          # without context: zero image difference
    assert p2.shape == p.shape
    with pytest.raises(ModelError):
        STGRURefiner(net, None)


def test_davss_forward():
    from vidseg_ros.core.davss import DAVSSNet, DAVSSRefiner
    rng = _rng(2)
    sem, img, prev = _semantics(rng), _image(rng), _image(rng)
    net = DAVSSNet(K)
    _randomise_head(net, 5.0)
    mod = DAVSSRefiner(net, FakeCheap())
    p, dmap = mod.refine(img, sem, None, prev_image=prev, flow_bwd=np.zeros((H, W, 2), np.float32))
    assert p.shape == (K, HP, WP) and dmap.shape == (HP, WP)
    assert ((dmap >= 0) & (dmap <= 1)).all()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=0.04)   # P_warp is uint8-quantised


def _fake_data(rng, n_frames=6):
    from vidseg_ros.core.warp import make_remap
    probs = np.stack([quantize_probs(_probs(rng)) for _ in range(n_frames)])
    rm = make_remap(np.zeros((HP, WP, 2), np.float32))
    return {
        'img_half': rng.integers(0, 256, (n_frames, 2 * HP, 2 * WP, 3), dtype=np.uint8),
        'img_q': rng.integers(0, 256, (n_frames, HP, WP, 3), dtype=np.uint8),
        'prevw_q': rng.integers(0, 256, (n_frames, HP, WP, 3), dtype=np.uint8),
        'teacher': probs, 'target': probs,
        'cheap': np.stack([quantize_probs(_probs(rng)) for _ in range(n_frames)]),
        'grid': np.repeat(np.stack([rm.map_x, rm.map_y], -1)[None], n_frames, 0),
        'frame': np.arange(1, n_frames), 'key': np.zeros(n_frames - 1, np.int64),
        'warped': np.stack([quantize_probs(_probs(rng)) for _ in range(n_frames - 1)]),
        'mask': rng.integers(0, 256, (n_frames - 1, HP, WP), dtype=np.uint8),
        'grfp_keys': np.array([0, 1, 2]),
        'grfp_mask_idx': np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4]]),
    }


@pytest.mark.parametrize('mode', LEARNED)
def test_one_training_step(mode):
    from vidseg_ros.core.temporal_train import step_loss
    torch.manual_seed(0)
    data = _fake_data(_rng(4))
    net = build_net(mode, {'num_classes': K}).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    idx = np.array([0, 1]) if mode == 'grfp' else np.array([0, 2, 3])
    loss = step_loss(mode, net, data, idx, torch.device('cpu'))
    assert loss.ndim == 0 and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, 'no parameter changed after a training step'
    loss2 = step_loss(mode, net, data, idx, torch.device('cpu'))
    assert torch.isfinite(loss2)


def test_save_load_roundtrip(tmp_path):
    net = build_net('refiner', {'num_classes': K})
    _randomise_head(net, 1.0)
    p = save_net(net, 'refiner', tmp_path / 'refiner.pt', {'x': 1})
    assert p.stat().st_size < 1_000_000
    net2 = load_net('refiner', p)
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k])
    with pytest.raises(ModelError, match='not .grfp. weights'):
        load_net('grfp', p)
    with pytest.raises(ModelError, match='not found'):
        load_net('refiner', tmp_path / 'missing.pt')
    with pytest.raises(ConfigError):
        build_net('warp')


def test_cheap_spec_parsing():
    from vidseg_ros.core.refiner import DEFAULT_CHEAP, cheap_matches, parse_cheap
    assert parse_cheap('espnetv2_s0.5_512x256@192x96') == ('espnetv2_s0.5_512x256', (192, 96))
    assert parse_cheap('default') == ('default', None)
    assert parse_cheap(DEFAULT_CHEAP)[1] is not None
    for bad in ('', '@192x96', 'net@192', 'net@axb'):
        with pytest.raises(ConfigError, match='cheap network spec'):
            parse_cheap(bad)
    assert cheap_matches('a@192x96', 'a@192x96') and cheap_matches('a@192x96', 'a')
    assert not cheap_matches('a@192x96', 'a@256x128') and not cheap_matches('a@192x96', 'b@192x96')


class _NamedFake:
    """Keyframe-model stand-in: only what make_temporal_module looks at."""
    name, num_outputs = 'fake', K
    output_to_class = np.array(list(range(19)) + [255], np.uint8)


@pytest.mark.parametrize('mode', ['grfp', 'davss'])
def test_cheap_network_recorded_and_checked(shared, tmp_path, mode):
    """GRFP/DAVSS weights fix their cheap network: it is loaded from the record, a different one is
    refused with a clear error, and weights without a record are refused."""
    net = build_net(mode, {'num_classes': K})
    spec = 'espnetv2_s0.5_512x256@128x64'
    w = save_net(net, mode, tmp_path / f'{mode}.pt', {'cheap': spec})
    mod = make_temporal_module(mode, _NamedFake(), weights=w)
    assert mod.cheap.spec == spec and mod.cheap.input_size == (128, 64)
    assert make_temporal_module(mode, _NamedFake(), weights=w, cheap='espnetv2_s0.5_512x256').cheap.spec == spec
    with pytest.raises(ModelError, match='trained with the cheap network espnetv2_s0.5_512x256@128x64, '
                                         'not espnetv2_s1.0_512x256@128x64'):
        make_temporal_module(mode, _NamedFake(), weights=w, cheap='espnetv2_s1.0_512x256@128x64')
    if mode == 'grfp':   # the class gate can be forced on/off at load time
        assert make_temporal_module(mode, _NamedFake(), weights=w, gate_classes=True).net.gate_classes
        assert not make_temporal_module(mode, _NamedFake(), weights=w, gate_classes=False).net.gate_classes
    else:
        with pytest.raises(ConfigError, match='grfp only'):
            make_temporal_module(mode, _NamedFake(), weights=w, gate_classes=True)
    with pytest.raises(ModelError, match='not espnetv2_s0.5_512x256@192x96'):
        make_temporal_module(mode, _NamedFake(), weights=w, cheap='espnetv2_s0.5_512x256@192x96')
    old = save_net(net, mode, tmp_path / 'old.pt', {'cheap_factor': 2})
    with pytest.raises(ModelError, match='do not record their cheap network'):
        make_temporal_module(mode, _NamedFake(), weights=old)
    other = _NamedFake()
    other.output_to_class = np.arange(K, dtype=np.uint8)
    with pytest.raises(ModelError, match='other classes'):
        make_temporal_module(mode, other, weights=w)


def test_cheap_pass_output(shared):
    """CheapPass runs its network at its own input size and returns probabilities on the grid."""
    from vidseg_ros.core.refiner import CheapPass
    cp = CheapPass.load('espnetv2_s0.5_512x256@128x64')
    assert cp.spec == 'espnetv2_s0.5_512x256@128x64' and cp.num_outputs == K
    p = cp(_image(_rng(8), 256, 128), (WP, HP))
    assert p.shape == (K, HP, WP) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)
    assert CheapPass.load('espnetv2_s0.5_512x256').spec == 'espnetv2_s0.5_512x256@512x256'
    # the same values as the network's segmentation probabilities, resized to the grid
    import cv2
    img = _image(_rng(9), 256, 128)
    ref = cp.model.segment(cv2.resize(img, (128, 64), interpolation=cv2.INTER_AREA)).probs
    ref = cv2.resize(np.ascontiguousarray(ref.transpose(1, 2, 0)), (WP, HP), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(cp(img, (WP, HP)), ref.transpose(2, 0, 1), atol=1e-6)


def test_apply_refinement_region():
    rng = _rng(5)
    sem = _semantics(rng)
    new_p = np.zeros((K, HP, WP), np.float32)
    new_p[3] = 1.0
    region = np.zeros((HP, WP), np.float32)
    region[:, :WP // 2] = 1.0
    out = apply_refinement(sem, new_p, region)
    assert (out.labels[:, :W // 2 - 4] == 3).all()
    np.testing.assert_array_equal(out.labels[:, W // 2 + 4:], sem.labels[:, W // 2 + 4:])
    assert out.probs.dtype == np.uint8 and (out.probs[3] == 255).all()
    # where the module keeps the argmax, the working-resolution labels survive even in the region
    sharp = sem.labels.copy()
    sharp[::2, ::2] = 7
    sem2 = Semantics(sharp, sem.probs, sem.class_map)
    same = apply_refinement(sem2, sem.probs.astype(np.float32) / 255, np.ones((HP, WP), np.float32))
    np.testing.assert_array_equal(same.labels, sharp)


def test_temporal_propagator_hands_context():
    rng = _rng(6)
    seen = []

    class Spy:
        needs_context = True

        def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
            seen.append((image.shape, None if prev_image is None else prev_image.shape,
                         None if flow_bwd is None else flow_bwd.shape, mask is not None))
            return warped.probs.astype(np.float32) / 255, np.zeros(warped.probs.shape[1:], np.float32)

        def __call__(self, image, warped, mask):
            return self.refine(image, warped, mask)[0]

    prop = TemporalPropagator(refiner=Spy())
    prop.set_keyframe(0, _semantics(rng))
    prop.step(0, image=_image(rng))
    f = np.zeros((H // 4, W // 4, 2), np.float32)
    out = prop.step(1, f, f, _image(rng))
    assert seen == [((H, W, 3), (H, W, 3), (H // 4, W // 4, 2), True)]
    assert out.labels.shape == (H, W) and prop.stats['refined_frames'] == 1
    assert 'refine' in out.timings


def test_refine_false_skips_the_module_on_a_step_and_on_a_late_keyframes_catch_up():
    """Load shedding (the propagation node's refine_max_lag): ``step(refine=False)`` and
    ``set_keyframe(refine=False)`` give the plain warp without running the module, counted; with
    refine=True the module runs again (both kinds of module the propagators take)."""
    from vidseg_ros.core.propagation import Propagator

    class Module:   # TemporalPropagator module: the state becomes class 5 wherever it runs
        def __init__(self):
            self.calls = 0

        def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
            self.calls += 1
            p = np.zeros(warped.probs.shape, np.float32)
            p[5] = 1.0
            return p, np.ones(warped.probs.shape[1:], np.float32)

        def __call__(self, image, warped, mask):   # Propagator refiner (IAM blend)
            return self.refine(image, warped, mask)[0]

    rng = _rng(7)
    kf = _semantics(rng)
    f = np.zeros((H // 4, W // 4, 2), np.float32)
    f_fwd = np.full((H // 4, W // 4, 2), 3.0, np.float32)   # fails the forward-backward check: IAM set
    imgs = [_image(rng) for _ in range(4)]
    plain = Propagator(refiner=None)
    plain.set_keyframe(0, kf)
    plain.step(0, image=imgs[0])
    want = [plain.step(i, f, f_fwd, imgs[i]).labels for i in (1, 2, 3)]
    for cls in (TemporalPropagator, Propagator):
        mod = Module()
        prop = cls(refiner=mod)
        prop.set_keyframe(0, kf)
        prop.step(0, image=imgs[0])
        out = prop.step(1, f, f_fwd, imgs[1], refine=False)
        assert mod.calls == 0 and prop.stats['refine_skipped'] == 1 and prop.stats['refined_frames'] == 0
        np.testing.assert_array_equal(out.labels, want[0])
        out = prop.step(2, f, f_fwd, imgs[2])
        assert mod.calls == 1 and prop.stats['refined_frames'] == 1 and (out.labels == 5).any(), cls
        # a late keyframe for frame 0, carried through frames 1 and 2 without the module
        assert prop.set_keyframe(1, kf, refine=False) == 'late'
        assert mod.calls == 1 and prop.stats['catch_up_refine_skipped'] == 1
        np.testing.assert_array_equal(prop.semantics.labels, want[0])   # kf at 1, one plain step to 2
        # ... and with the module (the default): it runs on the buffered frame
        prop.step(3, f, f_fwd, imgs[3], refine=False)
        assert prop.set_keyframe(2, kf) == 'late' and mod.calls == 2
        assert prop.stats['refine_skipped'] == 2 and prop.stats['catch_up_refine_skipped'] == 1


def test_a_skipped_region_refresh_ages_every_pixel():
    """A module that keeps an age map (region refresh): on a frame where it is skipped (load shedding) the
    state keeps the map, one frame older, instead of losing it (which the next refresh would read as a
    fresh keyframe); a refresh then starts from it again."""
    from vidseg_ros.core.propagation import Semantics as Sem

    class Refresh:
        def __init__(self):
            self.prev_ages = []

        def refresh(self, image, warped, mask, prev=None, flow_bwd=None):
            self.prev_ages.append(None if prev is None or prev.age is None else int(prev.age.max()))
            age = np.ones(warped.labels.shape, np.uint16)
            age[:, :8] = 0
            return Sem(warped.labels, warped.probs, warped.class_map, age)

        def __call__(self, image, warped, mask):
            return warped.probs.astype(np.float32) / 255

    rng = _rng(8)
    f = np.zeros((H // 4, W // 4, 2), np.float32)
    mod = Refresh()
    prop = TemporalPropagator(refiner=mod)
    prop.set_keyframe(0, _semantics(rng))
    prop.step(0, image=_image(rng))
    prop.step(1, f, f, _image(rng))
    assert prop.semantics.age.max() == 1
    prop.step(2, f, f, _image(rng), refine=False)
    prop.step(3, f, f, _image(rng), refine=False)
    age = prop.semantics.age
    assert age is not None and age[:, :8].max() == 2 and age[:, 8:].min() == 3
    prop.step(4, f, f, _image(rng))
    assert mod.prev_ages == [None, 3]   # the refresh on frame 4 saw the aged map


class _FakeESPModel:
    """Minimal KeyframeModel stand-in around a random-init ESPNetv2 (torch)."""

    def __init__(self, size=(128, 64)):
        from vidseg_ros.core.models.espnetv2 import ESPNetv2Seg
        torch.manual_seed(0)
        self.net = ESPNetv2Seg(0.5, K).eval()
        self.input_size = size
        self.device = 'cpu'
        self.name = 'fake'
        self.num_outputs = K
        self.output_to_class = np.array(list(range(19)) + [255], np.uint8)

    def preprocess(self, rgb):
        import cv2
        x = cv2.resize(rgb, self.input_size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@pytest.mark.parametrize('levels', [1, 2])
def test_caching_exact_on_keyframe(levels):
    from vidseg_ros.core.caching import FeatureCachingSegmenter
    model = _FakeESPModel()
    rng = _rng(7)
    img, img2 = _image(rng, 128, 64), _image(rng, 128, 64)
    seg = FeatureCachingSegmenter(model, levels=levels, schedule=3)
    with torch.inference_mode():
        full = model.net(torch.from_numpy(model.preprocess(img)))
    r0 = seg.process(img)
    assert r0.is_keyframe and r0.distance == 0
    assert np.array_equal(r0.probs, torch.softmax(full[0], 0).numpy())
    # same frame again, not a keyframe, no motion: the cached maps equal the fresh ones
    r1 = seg.process(img)
    assert not r1.is_keyframe and r1.distance == 1
    np.testing.assert_allclose(r1.probs, r0.probs, atol=1e-4)
    r2 = seg.process(img2)
    assert not r2.is_keyframe and r2.probs.shape == (K, 64, 128)
    # a new frame reuses the keyframe's cached maps: not what the full network gives on it
    assert seg.process(img2).is_keyframe          # interval 3
    with pytest.raises(ConfigError):
        FeatureCachingSegmenter(model, levels=3)


def test_caching_uses_cached_maps(shared):
    """With real weights: a non-keyframe differs from the full network on that frame (the keyframe's
    high-level maps are reused), but stays close to it (small motion)."""
    import cv2
    from vidseg_ros.core.caching import FeatureCachingSegmenter
    from vidseg_ros.core.models import load_model
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))
    size = (256, 128)
    a, b = [cv2.resize(cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB), size,
                       interpolation=cv2.INTER_AREA) for i in (0, 4)]
    model = load_model('espnetv2_s0.5_512x256', backend='torch', input_size=size)
    full_b = model.segment(b)
    for levels in (1, 2):
        seg = FeatureCachingSegmenter(model, levels=levels, schedule=10)
        r0 = seg.process(a)
        np.testing.assert_allclose(r0.probs, model.segment(a).probs, atol=1e-5)
        r1 = seg.process(b)
        assert not r1.is_keyframe
        diff = np.abs(r1.probs - full_b.probs).max()
        agree = np.mean(r1.labels == full_b.labels)
        assert diff > 1e-3 and agree > 0.6, (levels, diff, agree)


def test_registry_errors():
    with pytest.raises(ConfigError, match='unknown temporal mode'):
        make_temporal_module('nope', _FakeESPModel())
    assert make_temporal_module('warp', _FakeESPModel()) is None
    c = make_temporal_module('cache2', _FakeESPModel())
    assert c.levels == 2


def test_all_modes_run_in_propagator(shared):
    """Every mode on three real frames with a small real keyframe network."""
    import cv2
    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.propagation import semantics_from_segmentation
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))[:3]
    size = (128, 64)
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), size,
                       interpolation=cv2.INTER_AREA) for f in files]
    model = load_model('espnetv2_s0.5_512x256', backend='torch', input_size=size)
    sem0 = semantics_from_segmentation(model.segment(imgs[0]), model.output_to_class, size)
    flow = FlowEstimator('dis', preset='ultrafast')
    for mode in ('warp', 'iam-lowres', 'refiner', 'grfp', 'davss', 'cache1', 'cache2', 'region'):
        mod = make_temporal_module(mode, model, schedule=5)
        if mode.startswith('cache'):
            outs = [mod.process(im) for im in imgs]
            assert [o.is_keyframe for o in outs] == [True, False, False]
            assert outs[-1].labels.shape == (size[1], size[0])
            continue
        prop = TemporalPropagator(refiner=mod)
        prop.set_keyframe(0, sem0)
        prop.step(0, image=imgs[0])
        for i in (1, 2):
            fwd, bwd = flow.forward_backward(imgs[i - 1], imgs[i], native=True)
            out = prop.step(i, bwd, fwd, imgs[i])
        assert out.labels.shape == (size[1], size[0]) and out.distance == 2
        assert out.semantics.probs.shape == sem0.probs.shape
        if mode in LEARNED:
            assert prop.stats['refined_frames'] == 2


def test_attach_to_video_segmenter(shared):
    """attach() puts a module into pipeline.VideoSegmenter (refine runs on propagated frames)."""
    import cv2
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    from vidseg_ros.core.temporal import attach
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))[:3]
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (256, 128),
                       interpolation=cv2.INTER_AREA) for f in files]
    model = load_model('espnetv2_s0.5_512x256', backend='torch', input_size=(128, 64))
    seg = VideoSegmenter(model, OperatingPoint('t', 2, 3, True, True))
    mod = make_temporal_module('refiner', model)
    attach(seg, mod)
    assert isinstance(seg.propagator, TemporalPropagator)
    outs = [seg.process(im) for im in imgs]
    assert [o.is_keyframe for o in outs] == [True, False, False]
    assert outs[-1].labels.shape == (128, 256)
    assert mod.calls == 2 and seg.propagator.stats['refined_frames'] == 2


def test_train_cli_tiny(shared, tmp_path):
    """`vidseg train temporal` end to end on one snippet at 128x64 with sparse labels, resumable."""
    from vidseg_ros.core.temporal_train import cli_main
    args = ['--mode', 'refiner', '--iters', '2', '--batch', '2', '--size', '128x64', '--seqs', 'seq0000',
            '--udacity-frames', '0', '--max-dist', '2', '--sparse-labels', '--out', str(tmp_path / 'w'),
            '--ckpt-dir', str(tmp_path / 'ck'), '--cache-dir', str(tmp_path / 'cache')]
    assert cli_main(args) == 0
    w = tmp_path / 'w' / 'refiner.pt'
    assert w.is_file() and w.stat().st_size < 1_000_000
    card = (tmp_path / 'w' / 'TEMPORAL.md').read_text()
    assert '## refiner' in card and 'sparse labels' in card
    net = load_net('refiner', w)
    assert net.meta['iterations'] == 2 and net.meta['sparse_labels']
    # resume: more iterations continue from the checkpoint (cached data reused)
    assert cli_main(args[:2] + ['--iters', '3'] + args[4:]) == 0
    assert load_net('refiner', w).meta['iterations'] == 3
    assert (tmp_path / 'w' / 'TEMPORAL.md').read_text().count('## refiner') == 1
    with pytest.raises(ConfigError):
        cli_main(args + ['--size', '100x50'])


def test_train_cli_grfp_records_cheap_network(shared, tmp_path, capsys):
    """A GRFP run records its cheap network in the weights and the card; a later run with another
    cheap network does not resume the first one's checkpoint."""
    from vidseg_ros.core.temporal_train import cli_main
    base = ['--mode', 'grfp', '--iters', '2', '--batch', '2', '--size', '128x64', '--seqs', 'seq0000',
            '--udacity-frames', '0', '--max-dist', '3', '--out', str(tmp_path / 'w'),
            '--ckpt-dir', str(tmp_path / 'ck'), '--cache-dir', str(tmp_path / 'cache')]
    assert cli_main(base + ['--cheap', 'espnetv2_s0.5_512x256@64x32']) == 0
    w = tmp_path / 'w' / 'grfp.pt'
    assert load_net('grfp', w).meta['cheap'] == 'espnetv2_s0.5_512x256@64x32'
    card = (tmp_path / 'w' / 'TEMPORAL.md').read_text()
    assert 'cheap network `espnetv2_s0.5_512x256@64x32`' in card and '--cheap espnetv2_s0.5' in card
    capsys.readouterr()
    assert cli_main(base[:2] + ['--iters', '3'] + base[4:] + ['--cheap', 'espnetv2_s1.0_512x256@64x32']) == 0
    assert 'does not fit (other size/teacher/cheap network)' in capsys.readouterr().out
    assert load_net('grfp', w).meta['cheap'] == 'espnetv2_s1.0_512x256@64x32'
    with pytest.raises(ConfigError, match='cheap network spec'):
        cli_main(base + ['--cheap', 'espnetv2_s0.5_512x256@64'])


def test_bench_cheap_candidates(shared, tmp_path, capsys):
    """`bench-temporal --cheap-candidates` measures each candidate against the keyframe network."""
    import json
    from vidseg_ros.core.temporal_bench import main
    out = tmp_path / 'c.json'
    assert main(['--cheap-candidates', 'espnetv2_s0.5_512x256@64x32', 'espnetv2_s0.5_512x256@128x64',
                 '--size', '128x64', '--frames', '3', '--cost-rounds', '1', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res['candidates']
    assert list(rows) == ['espnetv2_s0.5_512x256@64x32', 'espnetv2_s0.5_512x256@128x64']
    for r in rows.values():
        assert r['cost_rel'] > 0 and 0 <= r['agree_keyframe'] <= 1 and 0 <= r['miou'] <= 1
    assert 'espnetv2_s0.5_512x256@64x32' in capsys.readouterr().out
    assert out.with_suffix('.txt').is_file()


def test_bench_on_a_video_without_labels(shared, tmp_path, capsys):
    """`bench-temporal --video`: the reference is the keyframe network's own per-frame output."""
    import json
    import cv2
    from vidseg_ros.core.errors import InputError
    from vidseg_ros.core.temporal_bench import main
    vid = tmp_path / 'clip.mp4'
    wr = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*'mp4v'), 10, (160, 80))
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0001').glob('*.jpg'))[:5]
    for f in files:
        wr.write(cv2.resize(cv2.imread(str(f)), (160, 80), interpolation=cv2.INTER_AREA))
    wr.release()
    out = tmp_path / 'v.json'
    assert main(['--video', str(vid), '--frames', '5', '--size', '128x64', '--model', 'espnetv2_s0.5_512x256',
                 '--modes', 'warp', 'region', 'cache1', 'cache1-graph', '--intervals', '2', '--cost-rounds', '1',
                 '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    assert res['config']['video'] == str(vid) and res['config']['seqs'] == ['clip'] and res['config']['frames'] == 5
    assert res['per_frame']['miou'] == 1.0
    assert 0 < res['intervals']['2']['warp']['miou'] < 1.0
    rows = res['intervals']['2']
    # the graph's caching (maps warped with the state) and the offline one (flow from the keyframe): both
    # are timed (the values are timings of a 128x64 frame: only their presence is checked, not their size,
    # which a loaded CI machine can push to 0 for the graph's, measured as step time minus plain warp)
    for m in ('cache1-graph', 'cache1'):
        assert rows[m]['cost_rel'] >= 0 and rows[m]['frame_rel'] > 0, rows[m]
    assert 0 < rows['cache1-graph']['miou'] <= 1.0 and rows['cache1-graph']['miou'] != rows['warp']['miou']
    assert "per-frame labels (a video without labels)" in capsys.readouterr().out
    assert (tmp_path / 'v_tradeoff.png').stat().st_size > 1000   # region vs warp at S=2
    with pytest.raises(InputError, match='video not found'):
        main(['--video', str(tmp_path / 'nope.mp4'), '--size', '128x64', '--model', 'espnetv2_s0.5_512x256',
              '--modes', 'warp', '--out', str(tmp_path / 'x.json')])


def test_bench_two_sided_rows(shared, tmp_path, monkeypatch):
    """`bench-temporal --two-sided`: each propagator row gets a delayed twin LABEL+2s whose frames are the
    forward row's outputs fused by the two-sided buffer (checked against it here), scored like the others,
    its cost the forward row's plus the two-sided work; caching rows get none."""
    import json
    from vidseg_ros.core import bidirectional, temporal_bench
    from vidseg_ros.core.temporal_bench import main
    fused = []
    real_push = bidirectional.TwoSidedBuffer.push

    def spy(self, out, *a, **kw):
        rel = real_push(self, out, *a, **kw)
        fused.extend(o.frame_id for o in rel)
        return rel
    monkeypatch.setattr(bidirectional.TwoSidedBuffer, 'push', spy)
    out = tmp_path / 't.json'
    assert main(['--seqs', 'seq0002', '--frames', '7', '--size', '128x64', '--model', 'espnetv2_s0.5_512x256',
                 '--modes', 'warp', 'region', 'cache1', '--intervals', '3', '--cost-rounds', '1', '--two-sided',
                 '--out', str(out)]) == 0
    rows = json.loads(out.read_text())['intervals']['3']
    assert set(rows) == {'warp', 'region', 'cache1', 'warp+2s', 'region+2s'}
    # keyframes 0, 3, 6: the frames before each keyframe come out when it is pushed (7 frames, two buffers)
    assert fused == [0, 1, 2, 3, 4, 5, 6] * 2
    for m in ('warp', 'region'):
        two = rows[m + temporal_bench.TWO_SIDED_SUFFIX]
        assert two['delayed'] is True and two['two_sided_rel'] > 0
        assert two['cost_rel'] == pytest.approx(rows[m]['cost_rel'] + two['two_sided_rel'])
        assert two['miou'] != rows[m]['miou'] and 0 < two['miou'] <= 1
    assert 'recovered' in rows['warp+2s']   # (None here: on these 7 tiny frames warping loses nothing)
    # mean cost per frame, keyframes included: keyframes 0, 3, 6 of 7 frames
    for m, r in rows.items():
        assert r['keyframe_fraction'] == pytest.approx(3 / 7)
        per = r['frame_rel'] if r.get('frame_rel') is not None else r['cost_rel']
        assert r['mean_rel'] == pytest.approx(3 / 7 + 4 / 7 * per)
    # one interval: only per-frame and warp bracket the rows, each module is set against that line
    sc = {e['mode']: e for e in json.loads(out.read_text())['same_compute']}
    assert set(sc) == set(rows) - {'warp'}
    # --phase: keyframes at frame 0, then every S-th from the phase on (0, 2, 5 here): other results
    kf_steps = []
    real_set = TemporalPropagator.set_keyframe

    def spy_kf(self, frame_id, *a, **kw):
        kf_steps.append(frame_id)
        return real_set(self, frame_id, *a, **kw)
    monkeypatch.setattr(TemporalPropagator, 'set_keyframe', spy_kf)
    out2 = tmp_path / 'p.json'
    assert main(['--seqs', 'seq0002', '--frames', '7', '--size', '128x64', '--model', 'espnetv2_s0.5_512x256',
                 '--modes', 'warp', '--intervals', '3', '--cost-rounds', '1', '--two-sided', '--phase', '2',
                 '--out', str(out2)]) == 0
    res2 = json.loads(out2.read_text())
    assert res2['config']['phase'] == 2 and kf_steps == [0, 2, 5]
    assert res2['intervals']['3']['warp']['keyframe_fraction'] == pytest.approx(3 / 7)
    assert res2['intervals']['3']['warp']['miou'] != rows['warp']['miou']
    with pytest.raises(ConfigError, match='--phase must be in'):
        main(['--seqs', 'seq0002', '--frames', '7', '--modes', 'warp', '--intervals', '3', '--phase', '3',
              '--out', str(tmp_path / 'x.json')])
    with pytest.raises(ConfigError, match='--two-sided needs a propagator mode'):
        temporal_bench.run(temporal_bench.argparse.Namespace(
            modes=['cache1'], variants=None, weights_dir=None, two_sided=True))


def test_bench_table_entries():
    """bench-temporal rows: --modes with --weights-dir, then --variants LABEL=MODE:WEIGHTS."""
    from argparse import Namespace
    from pathlib import Path
    from vidseg_ros.core.temporal_bench import table_entries
    a = Namespace(modes=['warp', 'grfp', 'cache1'], weights_dir='w',
                  variants=['g2=grfp:x/g.pt', 'g3=grfp+gate:x/g.pt', 'g4=grfp-gate:x/g.pt'])
    assert table_entries(a) == [('warp', 'warp', None, {}), ('grfp', 'grfp', Path('w/grfp.pt'), {}),
                                ('cache1', 'cache1', None, {}), ('g2', 'grfp', Path('x/g.pt'), {}),
                                ('g3', 'grfp', Path('x/g.pt'), {'gate_classes': True}),
                                ('g4', 'grfp', Path('x/g.pt'), {'gate_classes': False})]
    r = table_entries(Namespace(modes=['region'], weights_dir='w',
                                variants=['r3=region@0.3', 'r4=region@0.4/espnetv2_s0.5_512x256',
                                          's3=strip@0.3', 't4=tile@0.4/espnetv2_s0.5_512x256']))
    assert r == [('region', 'region', None, {}), ('r3', 'region', None, {'tile_area': 0.3}),
                 ('r4', 'region', None, {'tile_area': 0.4, 'tile_model': 'espnetv2_s0.5_512x256'}),
                 ('s3', 'region', None, {'tile_area': 0.3, 'tile_shape': 'strip'}),
                 ('t4', 'region', None, {'tile_area': 0.4, 'tile_shape': 'tile',
                                         'tile_model': 'espnetv2_s0.5_512x256'})]
    for bad in (['g2=cache1:x.pt'], ['g2=grfp'], ['grfp=grfp:x.pt'], ['=grfp:x.pt'], ['g2=davss+gate:x.pt'],
                ['r=region@0'], ['r=region@abc'], ['r=region@1.5'], ['warp=region@0.3'], ['r=region@/x'],
                ['t=tile@0'], ['t=strip@2'], ['t=square@0.3'], ['t=tile@0.3:x.pt']):
        with pytest.raises(ConfigError, match='--variants'):
            table_entries(Namespace(modes=['warp', 'grfp'], weights_dir=None, variants=bad))
    with pytest.raises(ConfigError, match='unknown mode'):
        table_entries(Namespace(modes=['magic'], weights_dir=None, variants=None))


def test_gate_to_state_removes_classes_absent_from_the_state():
    """GRFP's class gate: the cheap estimate keeps only the classes that are the argmax somewhere in
    the warped state, renormalised, with their ratios kept."""
    from vidseg_ros.core.grfp import gate_to_state
    w = torch.full((1, 4, 2, 3), 0.01)
    w[0, 0, :, :2] = 0.97      # state: class 0 on the left, class 2 on the right
    w[0, 2, :, 2] = 0.97
    x = torch.tensor([0.1, 0.6, 0.2, 0.1]).view(1, 4, 1, 1).expand(1, 4, 2, 3)
    g = gate_to_state(torch.log(x), torch.log(w)).exp()
    np.testing.assert_allclose(g.sum(1).numpy(), 1.0, atol=1e-5)
    assert (g.argmax(1) == 2).all()                       # class 1 (cheap's argmax) is not in the state
    assert float(g[0, 1].max()) < 0.01 and float(g[0, 3].max()) < 0.01
    np.testing.assert_allclose((g[0, 2] / g[0, 0]).numpy(), 2.0, rtol=1e-3)
    # per batch element: a second state where class 1 is present keeps it
    w2 = torch.cat([w, torch.log(torch.full((1, 4, 2, 3), 0.01)).exp().index_fill(1, torch.tensor([1]), 0.97)])
    g2 = gate_to_state(torch.log(x.expand(2, 4, 2, 3)), torch.log(w2)).exp()
    assert (g2[1].argmax(0) == 1).all() and (g2[0].argmax(0) == 2).all()


@pytest.mark.parametrize('kernel,separable', [(1, False), (3, False), (3, True)])
def test_stgru_kernel_and_gate_config_roundtrip(tmp_path, kernel, separable):
    """STGRU options (candidate kernel, separable convolutions, class gate) are stored with the
    weights and rebuilt on load; an untrained STGRU of each kind starts close to plain warping."""
    from vidseg_ros.core.grfp import STGRU, STGRURefiner
    cfg = {'num_classes': K, 'kernel': kernel, 'gate_classes': True, 'separable': separable}
    net = build_net('grfp', cfg)
    conv = net.wx[0] if separable else net.wx
    assert conv.kernel_size == (kernel, kernel) and net.gate_classes and net.separable == separable
    _randomise_head(net, 1.0)
    w = save_net(net, 'grfp', tmp_path / 'grfp.pt', {'cheap': 'x@64x32'})
    net2 = load_net('grfp', w)
    assert net2.kernel == kernel and net2.gate_classes and net2.separable == separable
    for k_, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k_])
    closed = STGRURefiner(STGRU(K, z_bias=-30.0, kernel=kernel, gate_classes=True, separable=separable),
                          FakeCheap())
    rng = _rng(9)
    sem, img = _semantics(rng), _image(rng)
    pc, _ = closed.refine(img, sem, None)
    wq = np.maximum(sem.probs.astype(np.float32) / 255, 1e-3)
    np.testing.assert_allclose(pc, wq / wq.sum(0), atol=1e-4)
    with pytest.raises(ModelError, match='kernel'):
        STGRU(K, kernel=2)


def test_grfp_gate_changes_output_only_where_cheap_brings_absent_classes():
    """With the gate, a cheap estimate that votes for a class absent from the state cannot make the
    STGRU output that class; without it, it can."""
    from vidseg_ros.core.grfp import STGRU, STGRURefiner

    class BusCheap:   # cheap pass that is sure everything is class 15 ('bus')
        def __call__(self, image, size_wh):
            p = np.full((K, size_wh[1], size_wh[0]), 0.001, np.float32)
            p[15] = 1.0
            return p / p.sum(0, keepdims=True)

    rng = _rng(11)
    p = _probs(rng)
    p[15] = 0.0
    p /= p.sum(0, keepdims=True)
    cm = np.array(list(range(19)) + [255], np.uint8)
    labels = np.argmax(np.repeat(np.repeat(p, 4, 1), 4, 2), 0).astype(np.uint8)
    sem = Semantics(cm[labels], quantize_probs(p), cm)
    img = _image(rng)
    outs = {}
    for gate in (False, True):
        net = STGRU(K, z_bias=3.0, gate_classes=gate)   # update gate mostly open: follow the cheap pass
        outs[gate], _ = STGRURefiner(net, BusCheap()).refine(img, sem, None)
    assert (outs[False].argmax(0) == 15).mean() > 0.5
    assert not (outs[True].argmax(0) == 15).any()


def test_cheap_pass_backend_auto_is_onnxruntime_and_matches_torch(shared):
    """The cheap pass uses the deployed backend (onnxruntime on the CPU) and its probabilities match
    the torch network's (so weights trained with either are valid with the other)."""
    from vidseg_ros.core.refiner import CheapPass
    auto = CheapPass.load('espnetv2_s0.5_512x256@128x64')
    tch = CheapPass.load('espnetv2_s0.5_512x256@128x64', backend='torch')
    assert auto.model.backend == 'onnxruntime' and tch.model.backend == 'torch'
    img = _image(_rng(12), 256, 128)
    np.testing.assert_allclose(auto(img, (WP, HP)), tch(img, (WP, HP)), atol=1e-4)


def test_train_cli_grfp_options(shared, tmp_path):
    """--stgru-kernel / --gate-classes reach the trained network and its card; other modes refuse them."""
    from vidseg_ros.core.temporal_train import cli_main
    base = ['--mode', 'grfp', '--iters', '2', '--batch', '2', '--size', '128x64', '--seqs', 'seq0000',
            '--udacity-frames', '0', '--max-dist', '3', '--out', str(tmp_path / 'w'),
            '--ckpt-dir', str(tmp_path / 'ck'), '--cache-dir', str(tmp_path / 'cache'),
            '--cheap', 'espnetv2_s0.5_512x256@64x32']
    assert cli_main(base + ['--stgru-kernel', '1', '--gate-classes']) == 0
    net = load_net('grfp', tmp_path / 'w' / 'grfp.pt')
    assert net.kernel == 1 and net.gate_classes and not net.separable
    assert net.meta['net_config'] == {'num_classes': K, 'kernel': 1, 'gate_classes': True}
    assert 'kernel 1; gate_classes True' in (tmp_path / 'w' / 'TEMPORAL.md').read_text()
    # another configuration does not resume that checkpoint
    assert cli_main(base + ['--stgru-separable', '--gate-classes']) == 0
    net = load_net('grfp', tmp_path / 'w' / 'grfp.pt')
    assert net.separable and net.kernel == 3 and net.meta['iterations'] == 2
    with pytest.raises(ConfigError, match='--mode grfp only'):
        cli_main(['--mode', 'refiner', '--gate-classes'] + base[2:])


def test_bench_table_pools_snippets_with_per_snippet_weights(shared, tmp_path, capsys):
    """bench-temporal over several snippets: '{seq}' in a weights path picks each held-out
    snippet's weights (cross-validation), frames are pooled, and a module evaluated on a snippet it
    was trained on is flagged."""
    import json
    from vidseg_ros.core.temporal_bench import main
    net = build_net('grfp', {'num_classes': K})
    for held_out, trained_on in (('seq0000', ['seq0001', 'seq0002']), ('seq0001', ['seq0001'])):
        save_net(net, 'grfp', tmp_path / f'cv_{held_out}' / 'grfp.pt',
                 {'cheap': 'espnetv2_s0.5_512x256@64x32', 'data': {'sequences': trained_on}})
    out = tmp_path / 't.json'
    assert main(['--seqs', 'seq0000', 'seq0001', '--size', '128x64', '--frames', '3', '--intervals', '2',
                 '--modes', 'warp', '--variants', 'g=grfp+gate:' + str(tmp_path / 'cv_{seq}' / 'grfp.pt'),
                 '--cost-rounds', '1', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    c = res['config']
    assert c['frames'] == 6 and c['seqs'] == ['seq0000', 'seq0001']
    assert c['weights']['g'] == {s: str(tmp_path / f'cv_{s}' / 'grfp.pt') for s in ('seq0000', 'seq0001')}
    assert c['seen'] == {'g': ['seq0001']} and c['gated'] == ['g']
    assert set(res['intervals']['2']) == {'warp', 'g'}
    assert 0 <= res['intervals']['2']['g']['miou'] <= 1 and res['intervals']['2']['g']['cost_rel'] > 0
    assert 'WARNING: g was trained on seq0001' in capsys.readouterr().out


def test_stage_costs_split_the_network():
    """The stages timed by ``vidseg profile-stages`` are the whole network, in order: chained they give its
    output, and their convolution MACs add up to its MACs; the caching floors drop exactly the cached stages."""
    from vidseg_ros.core.caching import CACHED_STAGES, STAGES, stage_costs
    from vidseg_ros.core.models.espnetv2 import ESPNetv2Seg
    torch.manual_seed(0)
    net = ESPNetv2Seg(0.5, 20)
    _randomise_head(net)
    r = stage_costs(net, (96, 48), rounds=1)
    assert [s['stage'] for s in r['stages']] == list(STAGES)
    assert r['max_abs_diff_vs_full'] < 1e-4
    assert sum(s['mac_share'] for s in r['stages']) == pytest.approx(1.0, abs=0.01)
    assert sum(s['time_share'] for s in r['stages']) == pytest.approx(1.0)
    share = {s['stage']: s for s in r['stages']}
    for lv, cached in CACHED_STAGES.items():
        f = r['caching_floor'][lv]
        assert f['mac_share'] == pytest.approx(1.0 - sum(share[c]['mac_share'] for c in cached), abs=0.01)
        assert 0.0 < f['time_share'] < 1.0
    assert r['caching_floor'][2]['mac_share'] < r['caching_floor'][1]['mac_share']
    assert net.training   # left as it was
    with pytest.raises(ConfigError, match='multiples of 16'):
        stage_costs(net, (100, 50))


def test_profile_stages_cli(shared, tmp_path, capsys):
    import json
    from vidseg_ros import cli
    out = tmp_path / 'sc.json'
    assert cli.main(['profile-stages', '--model', 'espnetv2_s0.5_512x256', '--size', '64x32', '--rounds', '1',
                     '--out', str(out), '-q']) == 0
    r = json.loads(out.read_text())
    assert r['input_size'] == [64, 32] and r['model'].startswith('espnetv2_s0.5')
    assert 'caching 1 level(s) reuses level4+dec1' in capsys.readouterr().out
    assert cli.main(['profile-stages', '--size', '64by32', '--out', str(out)]) == 2
    assert "--size must be WxH" in capsys.readouterr().err


def test_cached_feature_refresher_in_the_propagator(shared):
    """The graph's feature caching (CachedFeatureRefresher in a TemporalPropagator): keyframes are the
    full network's exact output and carry the cached maps; propagated frames equal the offline split
    (FeatureCachingSegmenter) on the same maps; the maps are warped with the state."""
    import cv2
    from vidseg_ros.core.caching import CachedFeatureRefresher, FeatureCachingSegmenter
    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.propagation import semantics_from_probs, semantics_from_segmentation
    from vidseg_ros.core.temporal import TemporalPropagator
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))
    size = (256, 128)
    a, b = [cv2.resize(cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB), size,
                       interpolation=cv2.INTER_AREA) for i in (0, 2)]
    model = load_model('espnetv2_s0.5_512x256', backend='torch', input_size=size)
    for levels in (1, 2):
        ref = CachedFeatureRefresher(model, levels=levels)
        kf, bad = ref.keyframe_semantics(a, size)
        exact = semantics_from_segmentation(model.segment(a), model.output_to_class, size)
        assert bad == 0 and np.array_equal(kf.labels, exact.labels) and np.array_equal(kf.probs, exact.probs)
        assert sorted(kf.features) == sorted(('d1', 'e3')[:levels])
        # zero flow: the state's maps are the keyframe's, so frame b equals the offline split without warp
        prop = TemporalPropagator(refiner=ref)
        prop.set_keyframe(0, kf)
        prop.step(0, image=a)
        zero = np.zeros(size[::-1] + (2,), np.float32)
        out = prop.step(1, zero, zero, image=b)
        off = FeatureCachingSegmenter(model, levels=levels, warp=False)
        off.process(a)
        cf = off.process(b)
        want = semantics_from_probs(cf.probs, model.output_to_class, size, labels=cf.labels)
        assert prop.stats['refined_frames'] == 1 and not prop.stats.get('module_errors')
        assert np.array_equal(out.semantics.probs, want.probs)
        assert np.array_equal(out.labels, want.labels)
        assert not np.array_equal(out.labels, kf.labels)        # b's own low level, not the keyframe's labels
        # real flow: the cached maps move with the state
        fb, ff = FlowEstimator('dis', preset='ultrafast').forward_backward(a, b)
        prop2 = TemporalPropagator(refiner=ref)
        prop2.set_keyframe(0, kf)
        prop2.step(0, image=a)
        out2 = prop2.step(1, fb, ff, image=b)
        assert not np.allclose(out2.semantics.features['d1'], kf.features['d1'])
        assert not np.array_equal(out2.semantics.probs, out.semantics.probs)
    # a keyframe without cached maps: counted, the frame keeps the plain warp
    prop3 = TemporalPropagator(refiner=CachedFeatureRefresher(model, levels=1))
    prop3.set_keyframe(0, exact)
    prop3.step(0, image=a)
    out3 = prop3.step(1, zero, zero, image=b)
    assert prop3.stats['module_errors'] == 1 and 'no cached map d1' in prop3.last_module_error
    assert np.array_equal(out3.labels, exact.labels)
    with pytest.raises(ModelError, match='torch network'):
        CachedFeatureRefresher(object())
    with pytest.raises(ConfigError, match='levels'):
        CachedFeatureRefresher(model, levels=3)


def test_cached_feature_refresher_on_onnxruntime(shared):
    """With an onnxruntime keyframe model the two halves run as exported graphs (verified against torch on
    export): the same maps and labels as the torch split, within float tolerance."""
    import cv2
    from vidseg_ros.core.caching import CachedFeatureRefresher
    from vidseg_ros.core.models import load_model
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))
    size = (256, 128)
    a, b = [cv2.resize(cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB), size,
                       interpolation=cv2.INTER_AREA) for i in (0, 3)]
    for levels in (1, 2):
        ort = CachedFeatureRefresher(load_model('espnetv2_s0.5_512x256', backend='onnxruntime', input_size=size),
                                     levels)
        pt = CachedFeatureRefresher(load_model('espnetv2_s0.5_512x256', backend='torch', input_size=size), levels)
        assert (ort.backend, pt.backend) == ('onnxruntime', 'torch')
        ko, _ = ort.keyframe_semantics(a, size)
        kt, _ = pt.keyframe_semantics(a, size)
        for k in kt.features:
            np.testing.assert_allclose(ko.features[k], kt.features[k], atol=1e-3)
        assert (ko.labels == kt.labels).mean() > 0.999
        ro, rt = ort.refresh(b, kt), pt.refresh(b, kt)
        assert (ro.labels == rt.labels).mean() > 0.999
        assert np.abs(ro.probs.astype(int) - rt.probs).max() <= 1
    with pytest.raises(ConfigError, match='caching backend'):
        CachedFeatureRefresher(load_model('espnetv2_s0.5_512x256', backend='torch', input_size=size), 1,
                               backend='tensorrt')
