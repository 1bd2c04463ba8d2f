"""Two-sided (delayed) propagation: the fusion rule, the buffer's release order and chain handling."""
import cv2
import numpy as np
import pytest

from vidseg_ros.core.bidirectional import TwoSidedBuffer, _sample, carry_trust, fuse_two_sided, link_checks
from vidseg_ros.core.errors import ConfigError, InputError
from vidseg_ros.core.propagation import FrameOutput, Semantics, quantize_probs

W, H = 32, 16          # working resolution; probabilities at (8, 4)
CM = np.arange(3, dtype=np.uint8)


def onehot(cls_map, conf=1.0):
    """Semantics whose probabilities put ``conf`` on the label of each probability cell."""
    lab = np.asarray(cls_map, np.uint8)
    small = cv2.resize(lab, (W // 4, H // 4), interpolation=cv2.INTER_NEAREST)
    p = np.full((3,) + small.shape, (1 - conf) / 2, np.float32)
    for c in range(3):
        p[c][small == c] = conf
    return Semantics(lab, quantize_probs(p), CM)


def uniform(c, conf=1.0):
    return onehot(np.full((H, W), c, np.uint8), conf)


def test_fuse_agreement_distance_and_confidence():
    a = uniform(0)
    same = fuse_two_sided(a, 1, uniform(0), 3)
    assert (same.labels == 0).all()
    # equal confidence: the nearer keyframe wins, either way round
    assert (fuse_two_sided(uniform(0), 1, uniform(1), 4).labels == 0).all()
    assert (fuse_two_sided(uniform(0), 4, uniform(1), 1).labels == 1).all()
    # equal distance: the more confident side wins
    assert (fuse_two_sided(uniform(0, 0.5), 2, uniform(1, 0.9), 2).labels == 1).all()
    assert (fuse_two_sided(uniform(0, 0.9), 2, uniform(1, 0.5), 2).labels == 0).all()
    # fused probabilities: the distance-weighted mean (1/d weights), quantised
    f = fuse_two_sided(uniform(0), 1, uniform(1), 3)
    assert abs(int(f.probs[0, 0, 0]) - round(255 * 0.75)) <= 1
    assert abs(int(f.probs[1, 0, 0]) - round(255 * 0.25)) <= 1
    # label detail below the probability grid survives where both sides agree
    lab = np.zeros((H, W), np.uint8)
    lab[:, 5] = 2                                  # a 1-px pole the 4x coarser probabilities miss
    g = fuse_two_sided(Semantics(lab, uniform(0).probs, CM), 1, Semantics(lab.copy(), uniform(0).probs, CM), 1)
    assert (g.labels[:, 5] == 2).all()


def test_fuse_decides_with_each_pixels_own_forward_distance():
    """A region-refreshed forward state (with an age map): where the sides disagree, each pixel counts its
    own forward distance, its age clipped to [1, d_fwd]. A pixel the network labelled on this frame (age 0)
    weighs like one next to a keyframe and, surer, keeps its label against the nearer keyframe carried
    back; pixels labelled 3 frames ago or at the keyframe (age clipped to 4) lose as before; the fused
    probabilities do not change; without an age map (or one of another size) nothing changes."""
    from dataclasses import replace
    fwd, bwd = uniform(0, 0.9), uniform(1, 0.6)
    plain = fuse_two_sided(fwd, 4, bwd, 1)
    assert (plain.labels == 1).all()
    age = np.full((H, W), 9, np.uint16)
    age[:, 8:16] = 0                       # the strip refreshed on this frame
    age[:, 16:24] = 3                      # ... and 3 frames ago
    f = fuse_two_sided(replace(fwd, age=age), 4, bwd, 1)
    assert (f.labels[:, 8:16] == 0).all()
    assert (f.labels[:, :8] == 1).all() and (f.labels[:, 16:] == 1).all()
    np.testing.assert_array_equal(f.probs, plain.probs)
    g = fuse_two_sided(replace(fwd, age=np.zeros((H // 2, W // 2), np.uint16)), 4, bwd, 1)
    assert (g.labels == 1).all()
    # where both sides agree the age plays no part; a void forward label never wins
    assert (fuse_two_sided(replace(uniform(1, 0.9), age=age), 4, bwd, 1).labels == 1).all()
    void = replace(fwd, labels=np.full((H, W), 255, np.uint8), age=np.zeros((H, W), np.uint16))
    assert (fuse_two_sided(void, 4, bwd, 1).labels == 1).all()


def test_fuse_errors():
    with pytest.raises(InputError, match='sizes'):
        fuse_two_sided(uniform(0), 1, Semantics(np.zeros((8, 8), np.uint8)), 1)
    with pytest.raises(ConfigError, match='>= 1'):
        fuse_two_sided(uniform(0), 0, uniform(1), 1)
    # labels only: the nearer side
    lo = fuse_two_sided(Semantics(np.zeros((H, W), np.uint8)), 3, Semantics(np.ones((H, W), np.uint8)), 1)
    assert (lo.labels == 1).all()


def test_sample_reads_the_nearest_probability_cell():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 256, (3, 4, 8)).astype(np.uint8)
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing='ij')
    ys, xs = ys.ravel(), xs.ravel()
    planes = rng.integers(-1, 3, ys.size)
    got, = _sample(p, (planes,), ys, xs, (W, H))
    up = np.stack([cv2.resize(p[c], (W, H), interpolation=cv2.INTER_NEAREST) for c in range(3)])
    want = np.where(planes < 0, -1, up[np.maximum(planes, 0), ys, xs].astype(np.int16))
    np.testing.assert_array_equal(got, want)


def _out(fid, sem, dist, kf=False):
    return FrameOutput(fid, sem.labels if sem is not None else np.full((H, W), 255, np.uint8),
                       np.ones((H, W), np.float32), kf, dist, False, semantics=sem)


ZERO = np.zeros((H // 4, W // 4, 2), np.float32)


def test_buffer_releases_in_order_with_distance_weighting():
    buf = TwoSidedBuffer()
    assert [o.frame_id for o in buf.push(_out(0, uniform(0), 0, kf=True))] == [0]
    for t in range(1, 5):                       # forward outputs: keyframe 0's class 0 carried along
        assert buf.push(_out(t, uniform(0), t), ZERO) == []
    assert len(buf) == 4
    rel = buf.push(_out(5, uniform(1), 0, kf=True), ZERO)   # next keyframe says class 1
    assert [o.frame_id for o in rel] == [1, 2, 3, 4, 5]
    assert [o.lookahead for o in rel] == [4, 3, 2, 1, 0]
    # nearer side wins: frames 1, 2 keep class 0, frames 3, 4 take keyframe 5's class 1
    assert [int(np.bincount(o.labels.ravel()).argmax()) for o in rel] == [0, 0, 1, 1, 1]
    assert rel[2].semantics.probs.shape == (3, H // 4, W // 4)
    assert buf.stats == dict(frames=6, fused=4, forward_only=0, backward_only=0, trusted=0)   # no flow_bwd: no checks
    assert len(buf) == 0


def test_buffer_carries_the_next_keyframe_back_along_the_forward_flow():
    """flow(t, t+1) = +2 px in x (content moves right): going back, the stripe moves left 2 px a frame."""
    lab = np.zeros((H, W), np.uint8)
    lab[:, 20:22] = 2
    kf = Semantics(lab, uniform(0).probs, CM)
    right = np.zeros((H, W, 2), np.float32)
    right[..., 0] = 2.0
    buf = TwoSidedBuffer()
    buf.push(_out(0, uniform(0), 0, kf=True))
    buf.push(_out(1, None, -1), right)          # no forward semantics: backward only
    buf.push(_out(2, None, -1), right)
    rel = buf.push(_out(3, kf, 0, kf=True), right)
    cols = [np.nonzero(o.labels[0] == 2)[0].tolist() for o in rel]
    assert cols == [[16, 17], [18, 19], [20, 21]]
    assert buf.stats['backward_only'] == 2 and not rel[0].degraded


def test_buffer_backward_holes_go_to_the_forward_side():
    """Content that leaves the view going forward (flow(t, t+1) points outside frame t+1) is unknown to the
    next keyframe: the carried-back chain keeps it void and the forward side wins there, at every step back;
    everywhere else the surer / nearer next keyframe wins."""
    right = np.zeros((H, W, 2), np.float32)
    right[..., 0] = 2.0                          # content moves 2 px right per frame
    buf = TwoSidedBuffer()
    buf.push(_out(0, uniform(0), 0, kf=True))
    buf.push(_out(1, uniform(0, 0.5), 1), right)
    buf.push(_out(2, uniform(0, 0.5), 2), right)
    rel = buf.push(_out(3, uniform(1), 0, kf=True), right)
    assert [o.frame_id for o in rel] == [1, 2, 3] and buf.stats['fused'] == 2
    f1, f2 = rel[0].labels, rel[1].labels
    assert (f2[:, 30:] == 0).all() and (f2[:, :30] == 1).all()      # 2 px left the view after frame 2
    assert (f1[:, 28:] == 0).all() and (f1[:, :28] == 1).all()      # 4 px after frame 1
    assert not (rel[0].semantics.labels == 255).any()


def test_buffer_max_delay_and_broken_chain_and_flush():
    buf = TwoSidedBuffer(max_delay=2)
    buf.push(_out(0, uniform(0), 0, kf=True))
    assert buf.push(_out(1, uniform(0), 1), ZERO) == []
    assert buf.push(_out(2, uniform(0), 2), ZERO) == []
    rel = buf.push(_out(3, uniform(0), 3), ZERO)         # waited too long: out forward-only
    assert [(o.frame_id, o.lookahead) for o in rel] == [(1, 0)]
    buf.push(_out(4, uniform(0), 4), ZERO)
    rel = buf.push(_out(5, uniform(1), 0, kf=True), ZERO)
    assert [(o.frame_id, o.lookahead) for o in rel] == [(3, 2), (4, 1), (5, 0)]
    # a frame without its flow ends the backward chain: the frames before it stay forward-only
    buf = TwoSidedBuffer()
    buf.push(_out(0, uniform(0), 0, kf=True))
    buf.push(_out(1, uniform(0), 1), ZERO)
    buf.push(_out(2, uniform(0), 2), None)
    buf.push(_out(3, uniform(0), 3), ZERO)
    rel = buf.push(_out(4, uniform(1), 0, kf=True), ZERO)
    assert [(o.frame_id, o.lookahead) for o in rel] == [(1, 0), (2, 2), (3, 1), (4, 0)]
    assert buf.stats['forward_only'] == 1
    buf.push(_out(5, uniform(1), 1), ZERO)
    assert [o.frame_id for o in buf.flush()] == [5] and len(buf) == 0
    with pytest.raises(ConfigError):
        TwoSidedBuffer(max_delay=-1)
    with pytest.raises(InputError, match='flow_fwd'):
        buf.push(_out(6, uniform(1), 2), np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match='FrameOutput'):
        buf.push('frame')


def test_buffer_late_keyframe_result():
    """In the ROS graph a keyframe's result can come after its frame was pushed as a propagated frame:
    keyframe() releases the frames before it fused, then the frame with the keyframe's semantics; the
    frames after it stay held for the next keyframe."""
    buf = TwoSidedBuffer()
    buf.push(_out(0, uniform(0), 0, kf=True))
    for t in range(1, 6):                   # frame 3's result is late: 3, 4, 5 pushed as propagated
        buf.push(_out(t, uniform(0), t), ZERO)
    rel = buf.keyframe(3, uniform(1))
    assert [(o.frame_id, o.lookahead, o.is_keyframe) for o in rel] == [(1, 2, False), (2, 1, False), (3, 0, True)]
    assert [int(np.bincount(o.labels.ravel()).argmax()) for o in rel] == [0, 1, 1]   # nearer side wins
    assert rel[2].distance == 0 and (rel[2].labels == 1).all()
    assert [h[0].frame_id for h in buf._held] == [4, 5]
    assert buf.keyframe(2, uniform(1)) == [] and buf.stats['keyframe_not_held'] == 1
    rel = buf.push(_out(6, uniform(1), 0, kf=True), ZERO)
    assert [(o.frame_id, o.lookahead) for o in rel] == [(4, 2), (5, 1), (6, 0)]


def test_buffer_time_bound():
    """max_wait_s: a frame held longer than the bound goes out forward-only, in frame order, on the next
    push or expire() (a node calls it from a timer); younger frames keep waiting for the keyframe."""
    buf = TwoSidedBuffer(max_wait_s=0.1)
    assert buf.push(_out(0, uniform(0), 0, kf=True), now=0.0)[0].frame_id == 0
    assert buf.push(_out(1, uniform(0), 1), ZERO, now=0.0) == []
    assert buf.push(_out(2, uniform(0), 2), ZERO, now=0.05) == []
    rel = buf.push(_out(3, uniform(0), 3), ZERO, now=0.12)          # frame 1 waited 0.12 s
    assert [(o.frame_id, o.lookahead) for o in rel] == [(1, 0)]
    assert buf.expire(now=0.14) == []                                # frame 2: 0.09 s
    assert [o.frame_id for o in buf.expire(now=0.2)] == [2] and len(buf) == 1
    rel = buf.push(_out(4, uniform(1), 0, kf=True), ZERO, now=0.21)  # frame 3 (0.09 s) is fused
    assert [(o.frame_id, o.lookahead) for o in rel] == [(3, 1), (4, 0)]
    assert buf.stats['forward_only'] == 2 and buf.stats['fused'] == 1
    assert TwoSidedBuffer().expire(now=1e9) == []                    # no bound: nothing expires
    for bad in (-0.1, float('nan')):
        with pytest.raises(ConfigError, match='max_wait_s'):
            TwoSidedBuffer(max_wait_s=bad)


def _shift(dx, w=W // 4, h=H // 4):
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0] = dx
    return f


def test_link_checks_and_carry_trust():
    """A consistent pair (+1 / -1 px) passes the forward-backward check except where it leaves the frame;
    a pair that does not invert (+2 / +2 px) fails everywhere. Trust is carried along the flow and AND-ed."""
    ok_t, ok_prev = link_checks(_shift(-1.0), _shift(1.0))     # flow(t, t-1) = -1, flow(t-1, t) = +1
    assert ok_t.dtype == np.uint8 and ok_t.shape == (H // 4, W // 4)
    assert ok_t[:, 1:].all() and not ok_t[:, 0].any()          # t's first column comes from outside
    assert ok_prev[:, :-1].all() and not ok_prev[:, -1].any()  # t-1's last column leaves the view
    bad_t, bad_prev = link_checks(_shift(2.0), _shift(2.0))
    assert not bad_t.any() and not bad_prev.any()
    assert link_checks(None, _shift(1.0)) is None and link_checks(_shift(1.0), None) is None
    ones = np.ones((H // 4, W // 4), np.uint8)
    assert carry_trust(None, _shift(1.0), ok_t) is ok_t        # a chain starts with its first check
    assert carry_trust(ones, _shift(1.0), None) is None        # no check: unknown from here on
    hole = ones.copy()
    hole[:, 3] = 0
    moved = carry_trust(hole, _shift(-1.0), ones)              # samples 1 px to the left
    assert not moved[:, 4].any() and not moved[:, 0].any() and moved[:, [1, 2, 3, 5, 6, 7]].all()
    np.testing.assert_array_equal(carry_trust(ones, _shift(0.0), ok_prev), ok_prev)


def test_fuse_with_trust_weighs_the_untrusted_side_down():
    """Where the sides disagree and exactly one chain is trusted, the untrusted side's probability counts
    ``untrusted_weight``: 0 -> the trusted side wins, 1 -> as without trust; never a void label."""
    fwd, bwd = uniform(0, 0.6), uniform(1, 0.6)       # equal confidence, forward nearer: forward wins
    cells = (H // 4, W // 4)
    t_yes, t_no = np.ones(cells, np.uint8), np.zeros(cells, np.uint8)
    assert (fuse_two_sided(fwd, 1, bwd, 2).labels == 0).all()
    assert (fuse_two_sided(fwd, 1, bwd, 2, t_no, t_yes, untrusted_weight=0.0).labels == 1).all()
    assert (fuse_two_sided(fwd, 1, bwd, 2, t_no, t_yes, untrusted_weight=1.0).labels == 0).all()
    # fused 0.6*2/3 + 0.2/3 = 0.47 (class 0) against 0.33 (class 1): halving the forward vote flips it
    assert (fuse_two_sided(fwd, 1, bwd, 2, t_no, t_yes, untrusted_weight=0.5).labels == 1).all()
    assert (fuse_two_sided(fwd, 1, bwd, 2, t_yes, t_no, untrusted_weight=0.0).labels == 0).all()
    # both trusted / both untrusted / one map missing: the plain rule
    for tf, tb in ((t_yes, t_yes), (t_no, t_no), (None, t_yes), (t_no, None)):
        assert (fuse_two_sided(fwd, 1, bwd, 2, tf, tb, untrusted_weight=0.0).labels == 0).all()
    # trust at another resolution than the labels; a per-pixel map: only its half flips
    half = np.zeros((2, 2), np.uint8)
    half[:, 1] = 1
    f = fuse_two_sided(fwd, 1, bwd, 2, 1 - half, half, untrusted_weight=0.0)
    assert (f.labels[:, :W // 2] == 0).all() and (f.labels[:, W // 2:] == 1).all()
    # a void carried-back label is never taken, however trusted
    vb = Semantics(np.full((H, W), 255, np.uint8), bwd.probs, CM)
    assert (fuse_two_sided(fwd, 1, vb, 2, t_no, t_yes, untrusted_weight=0.0).labels == 0).all()
    with pytest.raises(ConfigError, match='untrusted_weight'):
        fuse_two_sided(fwd, 1, bwd, 2, t_no, t_yes, untrusted_weight=1.5)


def test_buffer_uses_both_chains_trust():
    """Frames 1-2 after keyframe 0 are carried along a link that fails its forward-backward check; the links
    into keyframe 3 pass it. Where the sides disagree, frame 1 (nearer to keyframe 0) then takes keyframe
    3's label; without flow_bwd (no checks) it keeps its own, as before."""
    def run(with_checks, trust=True):
        buf = TwoSidedBuffer(trust=trust)
        buf.push(_out(0, uniform(0, 0.6), 0, kf=True))
        zero_b = _shift(0.0) if with_checks else None
        buf.push(_out(1, uniform(0, 0.6), 1), _shift(0.0), flow_bwd=_shift(3.0) if with_checks else None)
        buf.push(_out(2, uniform(0, 0.6), 2), _shift(0.0), flow_bwd=zero_b)
        return buf.push(_out(3, uniform(1, 0.6), 0, kf=True), _shift(0.0), flow_bwd=zero_b)
    plain, trusted = run(False), run(True)
    off = run(True, trust=False)                  # trust switched off: the flow_bwd is ignored
    assert [int(np.bincount(o.labels.ravel()).argmax()) for o in off] == [0, 1, 1]
    from vidseg_ros.core.schedule import OperatingPoint
    assert OperatingPoint('t', 2, 5, True, False, two_sided=True, trust=False).label().endswith('2-sided no-trust')
    with pytest.raises(ConfigError, match='trust=False .* needs two_sided=True'):
        OperatingPoint('t', 2, 5, True, False, trust=False)
    # (run() builds its own buffers; count the trusted fusions of one more)
    buf = TwoSidedBuffer()
    buf.push(_out(0, uniform(0), 0, kf=True))
    buf.push(_out(1, uniform(0), 1), _shift(0.0), flow_bwd=_shift(0.0))
    buf.push(_out(2, uniform(1), 0, kf=True), _shift(0.0), flow_bwd=_shift(0.0))
    assert buf.stats['fused'] == buf.stats['trusted'] == 1
    assert [int(np.bincount(o.labels.ravel()).argmax()) for o in plain] == [0, 1, 1]
    assert [int(np.bincount(o.labels.ravel()).argmax()) for o in trusted] == [1, 1, 1]
    with pytest.raises(InputError, match='one shape'):
        TwoSidedBuffer().push(_out(1, uniform(0), 1), _shift(0.0), flow_bwd=np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError, match='flow_bwd'):
        TwoSidedBuffer().push(_out(1, uniform(0), 1), _shift(0.0), flow_bwd=np.zeros((2, 2), np.float32))


def test_graph_bench_reports_the_delayed_topic():
    """graph_bench's per-phase summary: the delayed topic's labels of the phase, how many still wait, their
    latency (stamp -> received) and whether they came in stamp order; no section without delayed labels."""
    import threading
    from types import SimpleNamespace
    from vidseg_ros.ros.graph_bench import format_table, summarize
    ms = 1_000_000
    sent = [(s * 40 * ms, s * 40 * ms) for s in range(1, 7)]            # 6 frames, 40 ms apart
    rec = SimpleNamespace(cv=threading.Condition(), stats={}, kf={},
                          labels={s: s + 30 * ms for s, _ in sent},    # causal: 30 ms each
                          labels_two_sided={}, two_sided_order=[])
    assert 'two_sided' not in summarize(rec, sent)
    stamps = [s for s, _ in sent]
    for s in (stamps[1], stamps[0], stamps[2]):                          # 3 delayed labels, one out of order
        rec.labels_two_sided[s] = s + 200 * ms
        rec.two_sided_order.append(s)
    rec.labels_two_sided[999] = 0                                        # another phase's stamp: ignored
    t = summarize(rec, sent)['two_sided']
    assert t['frames_out'] == 3 and t['pending'] == 3 and t['in_stamp_order'] is False
    assert t['latency_median_ms'] == pytest.approx(200.0) and t['latency_max_ms'] == pytest.approx(200.0)
    rec.two_sided_order = sorted(rec.two_sided_order)
    r = {'mode': 'video', 'source': 'x', 'rate_hz': 25, 'model': 'm', 'schedule': 'fixed:5', 'scale': 1,
         'paced': summarize(rec, sent)}
    assert r['paced']['two_sided']['in_stamp_order'] is True
    assert 'delayed topic (two-sided): 3 labels (3 not out at the end' in format_table(r)
    assert 'fused' not in format_table(r)
    # the propagation node's counters over the phase: how many delayed labels were actually fused
    before = {'vidseg: propagation_node': {'two_sided_fused': '4', 'two_sided_forward_only': '1'}}
    after = {'vidseg: propagation_node': {'two_sided_fused': '6', 'two_sided_forward_only': '2',
                                          'two_sided_keyframes': '1'}}
    r['paced'] = summarize(rec, sent, before, after)
    assert r['paced']['diagnostics']['propagation_node']['two_sided_fused'] == 2
    assert 'in stamp order: True; fused 2, forward-only 1, keyframes 1' in format_table(r)
    assert 'temporal module on' not in format_table(r)       # no temporal module: no load-shedding line
    # a temporal module that was shed (refine_max_lag): the counts over the phase
    after['vidseg: propagation_node'].update(propagator_refined_frames='7', propagator_refine_skipped='5',
                                             propagator_catch_up_refine_skipped='3')
    r['paced'] = summarize(rec, sent, before, after)
    assert ('paced: temporal module on 7 frame(s); skipped to keep up (refine_max_lag) on 5 frame(s) and '
            '3 catch-up step(s)') in format_table(r)


def test_graph_bench_latency_floor_tells_a_saw_tooth_from_a_backlog():
    """keyframe_wait makes latency a saw-tooth (a keyframe frame waits, the next ones queue behind it): its
    median follows the keyframe interval, its floor does not. A backlog (every frame later than the last)
    lifts the floor; test_ros_realtime asserts on it."""
    import threading
    from types import SimpleNamespace
    from vidseg_ros.ros.graph_bench import format_table, summarize
    ms = 1_000_000
    sent = [(s * 100 * ms, s * 100 * ms) for s in range(1, 81)]        # 80 frames at 10 Hz

    def run(latency_ms):
        rec = SimpleNamespace(cv=threading.Condition(), stats={}, kf={}, labels_two_sided={}, two_sided_order=[],
                              labels={s: s + int(latency_ms(i) * ms) for i, (s, _) in enumerate(sent)})
        return summarize(rec, sent)

    # keyframes every 5 frames at first, every 4 later (as measured at 10 Hz with a 0.25 s network): the
    # median rises from 20 to 115 ms, the floor stays at 20 ms
    saw = run(lambda i: ([250, 160, 20, 20, 20] if i < 40 else [250, 160, 70, 20])[i % (5 if i < 40 else 4)])
    assert saw['latency_first_ms'] == pytest.approx(20.0) and saw['latency_last_ms'] == pytest.approx(115.0)
    assert saw['latency_floor_first_ms'] == pytest.approx(20.0)
    assert saw['latency_floor_last_ms'] <= 1.5 * saw['latency_floor_first_ms'] + 50.0
    back = run(lambda i: 20.0 + 10.0 * i)                               # 10 ms more lag per frame
    assert back['latency_floor_last_ms'] > 1.5 * back['latency_floor_first_ms'] + 50.0
    assert 'floor last20%' in format_table({'mode': 'video', 'source': 'x', 'rate_hz': 10, 'model': 'm',
                                            'schedule': 'fixed:5', 'scale': 1, 'paced': saw})
