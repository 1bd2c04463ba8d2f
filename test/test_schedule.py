"""Keyframe schedules and operating points."""
import pytest

from vidseg_ros.core.errors import ConfigError, InputError
from vidseg_ros.core.schedule import (PRESETS, AdaptiveSchedule, BudgetSchedule, FixedSchedule,
                                      OperatingPoint, get_operating_point, load_operating_points,
                                      make_schedule)


@pytest.mark.parametrize('s', [1, 2, 3, 5, 10])
def test_fixed_ratio_exact(s):
    sch = FixedSchedule(s)
    kfs = [i for i in range(100) if sch.is_keyframe(i)]
    assert kfs == list(range(0, 100, s))


def test_fixed_restart_forces_keyframe():
    sch = FixedSchedule(5)
    assert [sch.is_keyframe(i) for i in range(3)] == [True, False, False]
    assert sch.is_keyframe(0)          # index went backwards -> stream restart
    sch.reset()
    assert sch.is_keyframe(7)


def test_adaptive_triggers_on_inconsistency_and_interval():
    sch = AdaptiveSchedule(max_interval=6, inconsistency_threshold=0.2, min_interval=2)
    assert sch.is_keyframe(0)
    # below threshold: no keyframe until max_interval
    assert not sch.is_keyframe(1, {'inconsistent_fraction': 0.9})  # min_interval blocks
    assert sch.is_keyframe(2, {'inconsistent_fraction': 0.25}) and sch.last_reason == 'inconsistency'
    got = [sch.is_keyframe(i, {'inconsistent_fraction': 0.05}) for i in range(3, 10)]
    assert got == [False, False, False, False, False, True, False]   # frame 8 = 2 + 6
    assert sch.last_reason == ''


def test_adaptive_time_trigger():
    sch = AdaptiveSchedule(max_interval=100, inconsistency_threshold=1.0, max_time_s=0.5)
    assert sch.is_keyframe(0, {'timestamp': 10.0})
    assert not sch.is_keyframe(1, {'timestamp': 10.3})
    assert sch.is_keyframe(2, {'timestamp': 10.6}) and sch.last_reason == 'max_time'
    assert sch.is_keyframe(3, {'force': True})


def test_budget_adapts_to_measured_costs():
    sch = BudgetSchedule(camera_rate_hz=10, keyframe_cost_s=0.05, propagate_cost_s=0.01, ema=0.5,
                         utilisation=1.0, max_interval=50)
    assert sch.interval == 1            # the network alone keeps up with 10 Hz
    for _ in range(20):
        sch.observe(True, 0.5)          # keyframes turn out to take 0.5 s
    assert abs(sch.keyframe_cost_s - 0.5) < 1e-3
    # (0.5 - 0.01) / (0.1 - 0.01) = 5.44 -> 6
    assert sch.interval == 6
    kfs = [i for i in range(30) if sch.is_keyframe(i)]
    assert kfs == [0, 6, 12, 18, 24]
    for _ in range(20):
        sch.observe(False, 0.2)         # propagation alone exceeds the budget -> max interval
    assert sch.interval == 50
    par = BudgetSchedule(camera_rate_hz=10, keyframe_cost_s=0.45, utilisation=1.0, parallel=True)
    assert par.interval == 5


@pytest.mark.parametrize('spec,cls,attr,val', [
    ('fixed:5', FixedSchedule, 'interval', 5),
    (7, FixedSchedule, 'interval', 7),
    ('adaptive', AdaptiveSchedule, 'max_interval', 10),
    ('adaptive:12,inconsistency_threshold=0.3', AdaptiveSchedule, 'inconsistency_threshold', 0.3),
    ({'type': 'budget', 'camera_rate_hz': 30}, BudgetSchedule, 'camera_rate_hz', 30.0),
    ('budget:camera_rate_hz=15,parallel=true', BudgetSchedule, 'parallel', True),
])
def test_make_schedule_specs(spec, cls, attr, val):
    sch = make_schedule(spec)
    assert isinstance(sch, cls) and getattr(sch, attr) == val
    assert type(make_schedule(sch.to_dict())) is cls


@pytest.mark.parametrize('spec,needle', [
    ('fixed:0', 'interval'),
    ('fixed:abc', 'interval'),
    ({'type': 'adaptive', 'inconsistency_threshold': 1.5}, 'inconsistency_threshold'),
    ({'type': 'adaptive', 'max_interval': 3, 'min_interval': 5}, 'min_interval'),
    ('budget:camera_rate_hz=-1', 'camera_rate_hz'),
    ('adaptive:bogus=1', 'bogus'),
    ('sometimes', 'unknown schedule type'),
    (True, 'schedule spec'),
])
def test_bad_schedule_params_rejected(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        make_schedule(spec)


def test_operating_points(tmp_path):
    assert PRESETS['per_frame'].interval == 1
    assert PRESETS['warp_s5'].warp and not PRESETS['warp_s5'].refine
    assert not PRESETS['hold_s5'].warp
    op = get_operating_point('warp_s5', scale=2)
    assert (op.scale, op.interval, op.label()) == (2, 5, 'D2 S5 W+ R-')
    assert isinstance(PRESETS['adaptive'].make_schedule(), AdaptiveSchedule)
    assert isinstance(op.make_schedule(), FixedSchedule) and op.make_schedule().interval == 5
    with pytest.raises(ConfigError, match='scale'):
        OperatingPoint('x', scale=0)
    with pytest.raises(ConfigError, match='refine'):
        OperatingPoint('x', warp=False, refine=True)
    with pytest.raises(ConfigError, match='unknown operating point'):
        get_operating_point('nope')
    y = tmp_path / 'ops.yaml'
    y.write_text('fast: {scale: 2, interval: 10}\nhold: {interval: 5, warp: false}\n')
    ops = load_operating_points(y)
    assert ops['fast'].interval == 10 and ops['fast'].scale == 2 and not ops['hold'].warp
    y.write_text('bad: {interval: 0}\n')
    with pytest.raises(ConfigError, match='interval'):
        load_operating_points(y)
    with pytest.raises(InputError, match='not found'):
        load_operating_points(tmp_path / 'missing.yaml')
