"""Region refresh (core/region.py): tile choice, what is pasted, the carried age map, and that a late
keyframe re-propagated through buffered frames gives the in-order result."""
import numpy as np
import pytest

from vidseg_ros.core.errors import ConfigError
from vidseg_ros.core.propagation import IGNORE, Semantics, quantize_probs
from vidseg_ros.core.region import RegionRefresher, best_tile, entered_view, tile_size


def test_tile_size():
    assert tile_size((512, 256), 0.19, 'tile') == (224, 112)
    assert tile_size((1024, 512), 0.19, 'tile') == (448, 224)
    assert tile_size((128, 64), 1.0, 'tile') == (128, 64)
    assert tile_size((128, 64), 0.001, 'tile') == (32, 16)
    # the default: a full-height strip of the same area
    assert tile_size((512, 256), 0.19) == tile_size((512, 256), 0.19, 'strip') == (96, 256)
    assert tile_size((1024, 512), 0.19) == (192, 512)
    assert tile_size((512, 256), 0.30) == (160, 256)
    assert tile_size((128, 64), 1.0) == (128, 64)
    assert tile_size((128, 64), 0.001) == (16, 64)
    assert tile_size((100, 50), 1.0) == (96, 48)          # multiples of 16, inside the frame
    for bad in (0.0, -0.1, 1.5):
        for shape in ('strip', 'tile'):
            with pytest.raises(ConfigError, match='tile_area'):
                tile_size((512, 256), bad, shape)
    with pytest.raises(ConfigError, match="region shape must be one of strip, tile, got 'round'"):
        tile_size((512, 256), 0.19, 'round')


def test_best_tile_finds_the_hot_region_and_reaches_the_far_edges():
    need = np.ones((100, 200), np.float32)
    need[66:90, 146:180] = 50
    assert best_tile(need, 40, 30, stride=16) == (144, 64)
    need = np.zeros((100, 200), np.float32)
    need[-5:, -5:] = 1        # only reachable by the far-edge positions (not on the 16 grid)
    assert best_tile(need, 40, 30, stride=16) == (160, 70)


def test_entered_view():
    f = np.zeros((32, 64, 2), np.float32)
    f[..., 0] = -10.0           # every pixel comes from 10 px to the left in the previous frame
    m = entered_view(f, (64, 32))
    assert m[:, :9].all() and not m[:, 11:].any()
    assert entered_view(f, (128, 64)).shape == (64, 128)


@pytest.fixture(scope='module')
def small_model(shared):
    from vidseg_ros.core.models import load_model
    return load_model('espnetv2_s0.5_512x256', backend='torch', input_size=(128, 64))


def _warped(rng, w=128, h=64, k=20):
    labels = rng.integers(0, 19, (h, w)).astype(np.uint8)
    p = rng.random((k, h // 4, w // 4)).astype(np.float32)
    return Semantics(labels, quantize_probs(p / p.sum(0)), np.asarray(list(range(19)) + [255], np.uint8))


def test_refresh_pastes_only_inside_the_chosen_tile_and_resets_its_age(small_model):
    rng = np.random.default_rng(0)
    ref = RegionRefresher(small_model, tile_area=0.19, margin=4, conf=0.0, shape='tile')
    assert ref.tile == (64, 32)
    warped = _warped(rng)
    img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    mask = np.zeros((64, 128), np.float32)
    mask[40:60, 90:120] = 1.0          # the IAM flags the lower right: the tile goes there
    prev = warped.copy()
    prev.age = np.full((64, 128), 3, np.uint16)
    out = ref.refresh(img, warped, mask, prev=prev)
    (x, y, cw, ch), frac = ref.last
    assert (cw, ch) == (64, 32) and x <= 90 and x + cw >= 120 and y <= 40 and y + ch >= 60
    changed = out.labels != warped.labels
    inside = np.zeros_like(changed)
    inside[y:y + ch, x:x + cw] = True
    assert changed.any() and not (changed & ~inside).any()
    # conf=0: the whole core is pasted (margin 4 px on sides inside the frame); age 0 there, 4 elsewhere
    assert (out.age[~inside] == 4).all()
    core = out.age[y + (4 if y > 0 else 0):y + ch - (4 if y + ch < 64 else 0),
                   x + (4 if x > 0 else 0):x + cw - (4 if x + cw < 128 else 0)]
    assert core.size and (core == 0).all() and frac == 1.0
    assert out.probs.shape == warped.probs.shape and out.probs.dtype == np.uint8
    assert (out.probs != warped.probs).any()
    # no previous age (a keyframe before): everything starts at 1
    out2 = ref.refresh(img, warped, mask, prev=None)
    assert out2.age.max() == 1


def test_the_default_strip_spans_the_full_height_where_the_need_is(small_model):
    rng = np.random.default_rng(4)
    ref = RegionRefresher(small_model, tile_area=0.19, margin=4, conf=0.0)
    assert ref.shape == 'strip' and ref.tile == (32, 64)
    warped = _warped(rng)
    img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    mask = np.zeros((64, 128), np.float32)
    mask[50:60, 100:110] = 1.0           # a small flagged patch near the bottom right
    out = ref.refresh(img, warped, mask, prev=None)
    (x, y, cw, ch), frac = ref.last
    assert (y, cw, ch) == (0, 32, 64) and x <= 100 and x + cw >= 110
    changed = (out.labels != warped.labels) | (out.age == 0)
    cols = np.flatnonzero(changed.any(axis=0))
    rows = np.flatnonzero(changed.any(axis=1))
    # pasted over the strip's whole height (no margin at the frame's top and bottom edges) and only
    # inside its columns, less the margin on the sides inside the frame
    assert rows.min() == 0 and rows.max() == 63
    assert cols.min() >= x + (4 if x > 0 else 0) and cols.max() < x + cw - (4 if x + cw < 128 else 0)
    assert frac == 1.0


def test_refresh_with_conf_one_pastes_only_flagged_or_new_pixels(small_model):
    rng = np.random.default_rng(1)
    ref = RegionRefresher(small_model, tile_area=0.19, margin=0, conf=1.0)
    warped = _warped(rng)
    warped.labels[:, :10] = IGNORE          # unknown: entered the view
    img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    out = ref.refresh(img, warped, np.zeros((64, 128), np.float32), prev=None)
    changed = (out.labels != warped.labels) | (out.age == 0)
    assert changed[:, :10].any() and not changed[:, 10:].any()


def test_bad_parameters_are_clear_errors(small_model):
    with pytest.raises(ConfigError, match='conf'):
        RegionRefresher(small_model, conf=2.0)
    with pytest.raises(ConfigError, match='margin'):
        RegionRefresher(small_model, margin=-1)
    with pytest.raises(ConfigError, match='tile_area'):
        RegionRefresher(small_model, tile_area=0)
    ref = RegionRefresher(small_model)
    other = _warped(np.random.default_rng(2))
    other.class_map = np.arange(20, dtype=np.uint8)           # plane 19 is class 19, not void
    with pytest.raises(ConfigError, match='other class planes'):
        ref.refresh(np.zeros((64, 128, 3), np.uint8), other, None)
    with pytest.raises(ConfigError, match='region shape must be one of strip, tile'):
        RegionRefresher(small_model, shape='square')
    from vidseg_ros.core.temporal import make_temporal_module
    for opts in ({'tile_area': 0.3}, {'tile_shape': 'tile'}, {'tile_model': 'espnetv2_s1.0_512x256'}):
        with pytest.raises(ConfigError, match='tile_area / tile_shape / tile_model / catch_up apply to the region modes'):
            make_temporal_module('grfp', small_model, **opts)
    assert make_temporal_module('region', small_model, tile_area=0.3).tile_area == 0.3
    m = make_temporal_module('region', small_model, tile_area=0.3, tile_shape='tile')
    assert m.shape == 'tile' and m.tile == (64, 32)
    with pytest.raises(ConfigError, match='tile network .* other class planes'):
        RegionRefresher(small_model, tile_model='espnet_p2q8_camvid')


def test_another_network_on_the_tile(small_model):
    """tile_model: the tile runs that network (here s1.0 instead of the keyframe's s0.5) at the tile size."""
    from vidseg_ros.core.temporal import make_temporal_module
    ref = make_temporal_module('region', small_model, tile_area=0.19, tile_model='espnetv2_s1.0_512x256')
    assert 's1.0' in ref.net.name and ref.net.input_size == ref.tile == (32, 64)
    own = RegionRefresher(small_model, tile_area=0.19, margin=0, conf=0.0)
    rng = np.random.default_rng(3)
    warped = _warped(rng)
    img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    a = ref.refresh(img, warped, None)
    b = own.refresh(img, warped, None)
    assert ref.last[0] == own.last[0]            # same tile choice, different network on it
    assert not np.array_equal(a.probs, b.probs)


def test_late_keyframe_replay_equals_in_order_processing(small_model, shared):
    import cv2
    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.core.propagation import semantics_from_segmentation
    from vidseg_ros.core.temporal import TemporalPropagator, make_temporal_module
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0002').glob('*_leftImg8bit.*'))[:5]
    size = (128, 64)
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), size,
                       interpolation=cv2.INTER_AREA) for f in files]
    sem0 = semantics_from_segmentation(small_model.segment(imgs[0]), small_model.output_to_class, size)
    flow = FlowEstimator('dis', preset='ultrafast')
    flows = [None] + [flow.forward_backward(imgs[i - 1], imgs[i], native=True) for i in range(1, 5)]
    mod = make_temporal_module('region', small_model)

    def run(late, mod=mod):
        prop = TemporalPropagator(refiner=mod)
        if not late:
            prop.set_keyframe(0, sem0)
        prop.step(0, image=imgs[0])
        for i in range(1, 5):
            fwd, bwd = flows[i]
            out = prop.step(i, bwd, fwd, imgs[i])
        if late:
            assert prop.set_keyframe(0, sem0) == 'late'
            out = prop.current_output()
        return out

    a, b = run(False), run(True)
    assert a.distance == b.distance == 4
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.semantics.probs, b.semantics.probs)
    assert np.array_equal(a.semantics.age, b.semantics.age) and a.semantics.age.max() == 4
    assert (a.semantics.age == 0).any()
    assert mod.catch_up == 'all'
    # catch_up='newest': the late keyframe is warped through frames 1-3 and only frame 4 is refreshed (one
    # network pass instead of four); the state differs from in-order processing, the distance does not
    calls = []
    for m in (mod, make_temporal_module('region', small_model, catch_up='newest')):
        refresh = m.refresh
        m.refresh = lambda *args, _r=refresh, **kw: calls.append(1) or _r(*args, **kw)
        calls.clear()
        c = run(True, m)
        assert len(calls) == (4 if m.catch_up == 'all' else 1) and c.distance == 4   # (no state before the keyframe)
        del m.refresh
    assert c.semantics.age.max() <= 1 and (c.semantics.age == 0).any()   # the catch-up state counts as fresh
    with pytest.raises(ConfigError, match="region catch_up must be one of all, newest, got 'some'"):
        make_temporal_module('region', small_model, catch_up='some')


def test_a_failing_module_leaves_the_plain_warp(small_model, shared):
    """A module error (here: semantics from a model with other class planes) costs only the module:
    the TemporalPropagator still returns the warped labels, and counts the error."""
    from vidseg_ros.core.temporal import TemporalPropagator, make_temporal_module
    rng = np.random.default_rng(3)
    sem = _warped(rng)
    sem.class_map = np.arange(20, dtype=np.uint8)
    img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    flow = np.zeros((64, 128, 2), np.float32)
    ref = TemporalPropagator(refiner=make_temporal_module('region', small_model))
    plain = TemporalPropagator()
    for p in (ref, plain):
        p.set_keyframe(0, sem)
        p.step(0, image=img)
    a, b = ref.step(1, flow, flow, img), plain.step(1, flow, flow, img)
    assert np.array_equal(a.labels, b.labels) and a.distance == 1 and not a.degraded
    assert ref.stats['module_errors'] == 1 and 'other class planes' in ref.last_module_error


# ------------------------------------------------------------------------------ region refresh with context
def test_context_maps_are_the_resized_grids_cut_to_the_tile():
    import torch
    from vidseg_ros.core.region import CONTEXT_STRIDES, context_maps
    from vidseg_ros.core.models.espnetv2 import CONTEXT_KEYS
    rng = np.random.default_rng(0)
    grids = {k: rng.standard_normal((10, a, b)).astype(np.float32)
             for k, (a, b) in zip(CONTEXT_KEYS, [(5, 5), (5, 7), (7, 13), (13, 26)])}
    for box in [(0, 0, 96, 256), (208, 0, 96, 256), (416, 0, 96, 256), (96, 64, 224, 112)]:
        got = context_maps(grids, (512, 256), box)
        x, y, w, h = box
        for k, s in zip(CONTEXT_KEYS, CONTEXT_STRIDES):
            full = torch.nn.functional.interpolate(torch.from_numpy(grids[k])[None], size=(256 // s, 512 // s),
                                                   mode='bilinear', align_corners=True)
            ref = full[:, :, y // s:y // s + h // s, x // s:x // s + w // s]
            assert got[k].shape == ref.shape == (1, 10, h // s, w // s)
            assert float((got[k] - ref).abs().max()) < 1e-5


def test_epp_context_replaces_the_global_branch(small_model):
    """The whole frame's own grids as context give the plain output exactly; other grids change it."""
    import torch
    from vidseg_ros.core.region import context_maps
    net = small_model.net
    x = torch.from_numpy(small_model.preprocess(np.random.default_rng(1).integers(0, 255, (64, 128, 3), np.uint8)))
    with torch.inference_mode():
        plain = net(x)
        logits, grids = net.forward_high(net.forward_low(x), return_context=True)
        assert torch.equal(logits, plain) and sorted(grids) == ['ctx1', 'ctx2', 'ctx3', 'ctx4']
        maps = context_maps({k: g[0].numpy() for k, g in grids.items()}, (128, 64), (0, 0, 128, 64))
        same = net.forward_high(net.forward_low(x), context=maps)
        assert float((same - plain).abs().max()) < 1e-4
        other = net.forward_high(net.forward_low(x), context={k: v * 0 + 3 for k, v in maps.items()})
        assert float((other - plain).abs().max()) > 1e-2


def test_context_region_refresher(small_model, shared):
    """region-ctx: the keyframe pass gives the network's own labels plus its context grids; a tile uses the
    grids the state carries, falls back to the plain tile without them, and the onnxruntime tile equals the
    torch one."""
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.region import ContextRegionRefresher
    from vidseg_ros.core.temporal import make_temporal_module
    rng = np.random.default_rng(3)
    kf_img = rng.integers(0, 255, (64, 128, 3), np.uint8)
    img = np.roll(kf_img, 6, axis=1)
    ctx = make_temporal_module('region-ctx', small_model, tile_area=0.25)
    assert isinstance(ctx, ContextRegionRefresher) and ctx.ort is None   # a torch model: torch halves
    sem, bad = ctx.keyframe_semantics(kf_img, (128, 64))
    assert bad == 0 and np.array_equal(sem.labels, small_model.segment(kf_img).labels)
    assert sorted(sem.features) == ['ctx1', 'ctx2', 'ctx3', 'ctx4'] and sem.features['ctx1'].shape == (10, 5, 5)
    mask = np.zeros((64, 128), np.float32)
    mask[:, 40:70] = 1.0
    with_ctx = ctx.refresh(img, sem, mask)
    assert (ctx.context_used, ctx.context_missing) == (1, 0)
    assert sorted(with_ctx.features) == sorted(sem.features)      # the grids travel on with the state
    plain_sem = sem.copy()
    plain_sem.features = None
    without = ctx.refresh(img, plain_sem, mask)
    assert (ctx.context_used, ctx.context_missing) == (1, 1)
    plain = RegionRefresher(small_model, tile_area=0.25).refresh(img, plain_sem, mask)
    assert np.array_equal(without.labels, plain.labels)          # no grids: the plain tile
    for broken in ({'ctx1': np.zeros((3, 5, 5), np.float32)}, {'ctx4': np.full((10, 5, 5), np.nan, np.float32)}):
        bad_sem = sem.copy()
        bad_sem.features = dict(sem.features, **broken)
        assert np.array_equal(ctx.refresh(img, bad_sem, mask).labels, plain.labels)   # broken grids: plain too
    assert (ctx.context_used, ctx.context_missing) == (1, 3)
    assert not np.array_equal(with_ctx.labels, plain.labels)     # the context changes the tile's labels
    # onnxruntime (the CPU default): exported halves, the same labels as torch
    ort_model = load_model('espnetv2_s0.5_512x256', input_size=(128, 64))
    assert ort_model.backend == 'onnxruntime'
    octx = make_temporal_module('region-ctx', ort_model, tile_area=0.25)
    assert octx.ort is not None and octx.keyframe.ort is not None
    osem, _ = octx.keyframe_semantics(kf_img, (128, 64))
    assert (osem.labels == sem.labels).mean() > 0.999
    for k in sem.features:
        assert np.abs(osem.features[k] - sem.features[k]).max() < 1e-3
    assert (octx.refresh(img, osem, mask).labels == with_ctx.labels).mean() > 0.999
    # ESPNetv2 only, and not with another tile network
    with pytest.raises(ConfigError, match='needs an ESPNetv2 keyframe network .*espnet_p2q3.*use temporal mode region'):
        make_temporal_module('region-ctx', load_model('espnet_p2q3', backend='torch', input_size=(128, 64)))
    with pytest.raises(ConfigError, match='does not combine with tile_model'):
        make_temporal_module('region-ctx', small_model, tile_model='espnetv2_s1.0_512x256')
