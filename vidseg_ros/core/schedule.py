"""EVS operating points (D, S, W, R) and keyframe schedules (fixed, adaptive, budget).

An :class:`OperatingPoint` fixes how a video is processed (EVS Table 2):

* ``scale`` D  -- downscale factor of the *working resolution* (input / D) at which flow is computed,
  labels are warped and output is produced before upsampling to the input size;
* ``interval`` S -- keyframe interval of the default fixed schedule (1 = per-frame segmentation);
* ``warp`` W -- propagate labels with optical flow (False: hold the keyframe labels);
* ``refine`` R -- repair inconsistent regions (IAM mask) with a refiner.

A :class:`Schedule` decides per frame whether it is a keyframe. Schedules are small stateful objects
built from a spec (``make_schedule('fixed:5')``, ``make_schedule({'type': 'adaptive', ...})``) so the
ROS manager can switch them at run time. Protocol::

    kf = schedule.is_keyframe(frame_index, stats)   # stats: optional mapping, see below
    ...process...
    schedule.observe(kf, cost_s)                     # measured cost of that frame (budget schedule)

``stats`` keys (all optional): ``inconsistent_fraction`` (IAM fraction of the last propagated frame),
``timestamp`` (seconds, for time-based triggers), ``force`` (True forces a keyframe).
The schedule itself remembers the index (and timestamp) of the last keyframe it granted; a frame index
that goes backwards (stream restart) forces a keyframe.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import ConfigError, InputError

__all__ = ['OperatingPoint', 'PRESETS', 'get_operating_point', 'load_operating_points',
           'Schedule', 'FixedSchedule', 'AdaptiveSchedule', 'BudgetSchedule', 'make_schedule',
           'SCHEDULE_TYPES']


def _check_num(name: str, value, lo=None, hi=None, integer=False):
    """Validate a numeric parameter; raise ConfigError naming it and its range."""
    rng = f'[{lo if lo is not None else "-inf"}, {hi if hi is not None else "inf"}]'
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be a number in {rng}, got {value!r}') from None
    if math.isnan(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f'{name} must be in {rng}, got {value!r}')
    if integer:
        if v != int(v):
            raise ConfigError(f'{name} must be an integer in {rng}, got {value!r}')
        return int(v)
    return v


def _to_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'):
        return value.lower() in ('1', 'true', 'yes', 'on')
    raise ConfigError(f'{name} must be a boolean, got {value!r}')


# ----------------------------------------------------------------------------------------------
# Operating points
# ----------------------------------------------------------------------------------------------

@dataclass
class OperatingPoint:
    """EVS operating point: working-resolution downscale D, keyframe interval S, warp W, refine R.

    ``schedule`` optionally overrides the keyframe schedule (a spec for :func:`make_schedule`);
    None means ``FixedSchedule(interval)``. ``two_sided``: delayed two-sided propagation
    (``bidirectional.py``: the next keyframe carried back and fused in; offline / latency-tolerant);
    ``max_delay`` (frames, two-sided only; None = until the next keyframe) bounds how many frames wait
    for it: older ones go out forward-only (``TwoSidedBuffer``). ``trust`` (two-sided only; default
    on): weigh the side whose flow chain failed the forward-backward check down where the sides
    disagree (``bidirectional`` module docstring); off: the fusion of sessions 7-9.
    """

    name: str = 'custom'
    scale: int = 1
    interval: int = 1
    warp: bool = True
    refine: bool = False
    schedule: Any = None
    two_sided: bool = False
    max_delay: Optional[int] = None
    trust: bool = True

    def __post_init__(self):
        self.scale = _check_num('scale', self.scale, 1, 16, integer=True)
        self.interval = _check_num('interval', self.interval, 1, 10000, integer=True)
        self.warp = _to_bool('warp', self.warp)
        self.refine = _to_bool('refine', self.refine)
        if self.refine and not self.warp:
            raise ConfigError('refine=True needs warp=True (refinement repairs warped labels)')
        self.two_sided = _to_bool('two_sided', self.two_sided)
        if self.two_sided and not self.warp:
            raise ConfigError('two_sided=True fuses warped states from both sides: it needs warp=True')
        if self.max_delay is not None:
            if not self.two_sided:
                raise ConfigError('max_delay bounds the wait of two-sided propagation: it needs two_sided=True')
            self.max_delay = _check_num('max_delay', self.max_delay, 0, 10000, integer=True)
        self.trust = _to_bool('trust', self.trust)
        if not self.trust and not self.two_sided:
            raise ConfigError('trust=False switches off the trust of two-sided fusion: it needs two_sided=True')
        self.name = str(self.name)
        if self.schedule is not None:
            make_schedule(self.schedule)  # validate early

    def make_schedule(self) -> 'Schedule':
        return make_schedule(self.schedule if self.schedule is not None else {'type': 'fixed', 'interval': self.interval})

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.schedule, Schedule):
            d['schedule'] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> 'OperatingPoint':
        known = {'name', 'scale', 'interval', 'warp', 'refine', 'schedule', 'two_sided', 'max_delay', 'trust'}
        extra = set(d) - known
        if extra:
            raise ConfigError(f'unknown operating point key(s) {sorted(extra)} (known: {sorted(known)})')
        return cls(**dict(d))

    def label(self) -> str:
        """Short human label, e.g. ``D2 S5 W+ R-``."""
        return (f'D{self.scale} S{self.interval} W{"+" if self.warp else "-"} R{"+" if self.refine else "-"}'
                + (' 2-sided' if self.two_sided else '')
                + (f' max-delay {self.max_delay}' if self.max_delay is not None else '')
                + (' no-trust' if not self.trust else ''))


def _presets() -> dict:
    p = {'per_frame': OperatingPoint('per_frame', 1, 1, True, False)}
    for s in (2, 3, 5, 10):
        p[f'warp_s{s}'] = OperatingPoint(f'warp_s{s}', 1, s, True, False)
        p[f'warp_refine_s{s}'] = OperatingPoint(f'warp_refine_s{s}', 1, s, True, True)
    p['hold_s5'] = OperatingPoint('hold_s5', 1, 5, False, False)
    p['adaptive'] = OperatingPoint('adaptive', 1, 10, True, False,
                                   schedule={'type': 'adaptive', 'max_interval': 10,
                                             'inconsistency_threshold': 0.08, 'min_interval': 1})
    return p




def get_operating_point(name_or_dict, **overrides) -> OperatingPoint:
    """Preset by name (see PRESETS), a dict, or an OperatingPoint; keyword overrides are applied."""
    if isinstance(name_or_dict, OperatingPoint):
        d = name_or_dict.to_dict()
    elif isinstance(name_or_dict, Mapping):
        d = dict(name_or_dict)
    else:
        key = str(name_or_dict)
        if key not in PRESETS:
            raise ConfigError(f'unknown operating point {key!r} (known: {", ".join(PRESETS)})')
        d = PRESETS[key].to_dict()
    d.update({k: v for k, v in overrides.items() if v is not None})
    return OperatingPoint.from_dict(d)


def load_operating_points(path) -> dict:
    """Read operating points from YAML: a mapping ``name: {scale, interval, warp, refine, schedule}``
    or a list of such dicts with ``name``. Returns ``{name: OperatingPoint}``."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise InputError(f'operating point file not found: {p}')
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise InputError(f'{p}: invalid YAML ({str(e).splitlines()[0]})') from None
    if isinstance(data, Mapping) and 'operating_points' in data:
        data = data['operating_points']
    out = {}
    if isinstance(data, Mapping):
        items = [dict(v or {}, name=k) for k, v in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise InputError(f'{p}: expected a mapping or list of operating points, got {type(data).__name__}')
    for it in items:
        if not isinstance(it, Mapping) or 'name' not in it:
            raise InputError(f'{p}: each operating point needs a name, got {it!r}')
        try:
            op = OperatingPoint.from_dict(it)
        except ConfigError as e:
            raise ConfigError(f'{p}: operating point {it.get("name")!r}: {e}') from None
        out[op.name] = op
    return out


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------

class Schedule:
    """Base class: decides per frame whether it is a keyframe (see module docstring)."""

    type_name = 'base'

    def __init__(self):
        self._last_kf = None       # frame index of the last granted keyframe
        self._last_kf_time = None  # its timestamp (from stats) if any
        self._last_index = None

    def reset(self) -> None:
        """Forget history: the next frame is a keyframe."""
        self._last_kf = None
        self._last_kf_time = None
        self._last_index = None

    def distance(self, frame_index) -> int | None:
        """Frames since the last granted keyframe (None if none yet)."""
        if self._last_kf is None:
            return None
        return int(frame_index) - int(self._last_kf)

    def is_keyframe(self, frame_index: int, stats: Mapping | None = None) -> bool:
        stats = stats or {}
        frame_index = int(frame_index)
        restart = self._last_index is not None and frame_index <= self._last_index
        self._last_index = frame_index
        if restart or self._last_kf is None or stats.get('force'):
            kf = True
        else:
            kf = bool(self._decide(frame_index, frame_index - self._last_kf, stats))
        if kf:
            self._last_kf = frame_index
            self._last_kf_time = stats.get('timestamp')
        return kf

    def _decide(self, frame_index: int, distance: int, stats: Mapping) -> bool:
        raise NotImplementedError

    def observe(self, is_keyframe: bool, cost_s: float) -> None:
        """Report the measured processing cost of a frame (used by BudgetSchedule)."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in self.to_dict().items() if k != 'type')
        return f'{type(self).__name__}({args})'


class FixedSchedule(Schedule):
    """Keyframe every ``interval`` frames exactly (frames 0, S, 2S, ... after the first keyframe)."""

    type_name = 'fixed'

    def __init__(self, interval: int = 5):
        super().__init__()
        self.interval = _check_num('interval', interval, 1, 10000, integer=True)

    def _decide(self, frame_index, distance, stats):
        return distance >= self.interval

    def to_dict(self):
        return {'type': 'fixed', 'interval': self.interval}


class AdaptiveSchedule(Schedule):
    """Keyframe when the propagated output degrades or gets old.

    A keyframe is forced when (a) ``distance >= max_interval``, or (b) ``distance >= min_interval``
    and the IAM inconsistent fraction of the last propagated frame (``stats['inconsistent_fraction']``)
    is ``>= inconsistency_threshold``, or (c) ``max_time_s`` is set and ``stats['timestamp']`` is at
    least that many seconds after the last keyframe's timestamp.
    """

    type_name = 'adaptive'

    def __init__(self, max_interval: int = 10, inconsistency_threshold: float = 0.08,
                 min_interval: int = 1, max_time_s: float | None = None):
        super().__init__()
        self.max_interval = _check_num('max_interval', max_interval, 1, 10000, integer=True)
        self.min_interval = _check_num('min_interval', min_interval, 1, 10000, integer=True)
        if self.min_interval > self.max_interval:
            raise ConfigError(f'min_interval must be in [1, max_interval={self.max_interval}], '
                              f'got {min_interval!r}')
        self.inconsistency_threshold = _check_num('inconsistency_threshold', inconsistency_threshold, 0.0, 1.0)
        self.max_time_s = None if max_time_s is None else _check_num('max_time_s', max_time_s, 1e-6, None)
        self.last_reason = 'first'

    def _decide(self, frame_index, distance, stats):
        if distance >= self.max_interval:
            self.last_reason = 'max_interval'
            return True
        ts = stats.get('timestamp')
        if self.max_time_s is not None and ts is not None and self._last_kf_time is not None \
                and float(ts) - float(self._last_kf_time) >= self.max_time_s:
            self.last_reason = 'max_time'
            return True
        frac = stats.get('inconsistent_fraction')
        if distance >= self.min_interval and frac is not None and float(frac) >= self.inconsistency_threshold:
            self.last_reason = 'inconsistency'
            return True
        self.last_reason = ''
        return False

    def to_dict(self):
        return {'type': 'adaptive', 'max_interval': self.max_interval,
                'inconsistency_threshold': self.inconsistency_threshold,
                'min_interval': self.min_interval, 'max_time_s': self.max_time_s}


class BudgetSchedule(Schedule):
    """Pick the interval S that keeps up with the camera from measured costs (EMA).

    Sequential pipeline (default): mean cost per frame ``(k + (S-1) p) / S`` must fit
    ``utilisation / camera_rate_hz`` -> ``S = ceil((k - p) / (budget - p))``.
    ``parallel=True`` (keyframe network on its own worker, as in the ROS graph): the keyframe worker must
    finish within S frame periods -> ``S = ceil(k * rate / utilisation)``.
    S is clamped to ``[min_interval, max_interval]``; when propagation alone exceeds the budget
    S = max_interval. ``keyframe_cost_s``/``propagate_cost_s`` are the initial estimates; each
    :meth:`observe` updates the matching EMA with weight ``ema``.
    """

    type_name = 'budget'

    def __init__(self, camera_rate_hz: float = 17.0, keyframe_cost_s: float = 1.0,
                 propagate_cost_s: float = 0.02, min_interval: int = 1, max_interval: int = 30,
                 ema: float = 0.2, utilisation: float = 0.9, parallel: bool = False):
        super().__init__()
        self.camera_rate_hz = _check_num('camera_rate_hz', camera_rate_hz, 1e-3, 1000)
        self.keyframe_cost_s = _check_num('keyframe_cost_s', keyframe_cost_s, 0.0, 3600)
        self.propagate_cost_s = _check_num('propagate_cost_s', propagate_cost_s, 0.0, 3600)
        self.min_interval = _check_num('min_interval', min_interval, 1, 10000, integer=True)
        self.max_interval = _check_num('max_interval', max_interval, 1, 10000, integer=True)
        if self.min_interval > self.max_interval:
            raise ConfigError(f'min_interval must be in [1, max_interval={self.max_interval}], '
                              f'got {min_interval!r}')
        self.ema = _check_num('ema', ema, 1e-6, 1.0)
        self.utilisation = _check_num('utilisation', utilisation, 1e-3, 1.0)
        self.parallel = _to_bool('parallel', parallel)

    @property
    def interval(self) -> int:
        """The interval S implied by the current cost estimates."""
        budget = self.utilisation / self.camera_rate_hz
        k, p = self.keyframe_cost_s, self.propagate_cost_s
        if self.parallel:
            s = math.ceil(k / budget - 1e-9) if k > 0 else 1
        elif k <= budget:
            s = 1
        elif p >= budget:
            s = self.max_interval
        else:
            s = math.ceil((k - p) / (budget - p) - 1e-9)
        return int(min(max(s, self.min_interval), self.max_interval))

    def _decide(self, frame_index, distance, stats):
        return distance >= self.interval

    def observe(self, is_keyframe: bool, cost_s: float) -> None:
        c = float(cost_s)
        if not math.isfinite(c) or c < 0:
            return
        if is_keyframe:
            self.keyframe_cost_s += self.ema * (c - self.keyframe_cost_s)
        else:
            self.propagate_cost_s += self.ema * (c - self.propagate_cost_s)

    def to_dict(self):
        return {'type': 'budget', 'camera_rate_hz': self.camera_rate_hz,
                'keyframe_cost_s': self.keyframe_cost_s, 'propagate_cost_s': self.propagate_cost_s,
                'min_interval': self.min_interval, 'max_interval': self.max_interval, 'ema': self.ema,
                'utilisation': self.utilisation, 'parallel': self.parallel}


SCHEDULE_TYPES = {'fixed': FixedSchedule, 'adaptive': AdaptiveSchedule, 'budget': BudgetSchedule}
_POSITIONAL = {'fixed': 'interval', 'adaptive': 'max_interval', 'budget': 'camera_rate_hz'}


def _parse_value(s: str):
    import yaml
    try:
        return yaml.safe_load(s)
    except yaml.YAMLError:
        return s


def make_schedule(spec) -> Schedule:
    """Build a schedule from a spec.

    Accepted: a Schedule (returned as is), an int S (fixed), a string ``'fixed'``, ``'fixed:5'``,
    ``'adaptive'``, ``'adaptive:10'``, ``'adaptive:max_interval=10,inconsistency_threshold=0.1'``,
    ``'budget:camera_rate_hz=17,keyframe_cost_s=1.2'`` (a bare number after ``:`` is the first
    parameter: interval / max_interval / camera_rate_hz), or a dict ``{'type': 'adaptive', ...}``.
    Unknown types or parameters and out-of-range values raise ConfigError naming them.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f'schedule spec must be a string, int or dict, got {spec!r}')
    if isinstance(spec, int):
        return FixedSchedule(spec)
    if isinstance(spec, str):
        text = spec.strip()
        typ, _, rest = text.partition(':')
        typ = typ.strip().lower()
        params: dict = {}
        rest = rest.strip()
        if rest:
            for part in rest.split(','):
                part = part.strip()
                if not part:
                    continue
                if '=' in part:
                    k, v = part.split('=', 1)
                    params[k.strip()] = _parse_value(v.strip())
                elif typ in _POSITIONAL and _POSITIONAL[typ] not in params:
                    params[_POSITIONAL[typ]] = _parse_value(part)
                else:
                    raise ConfigError(f'schedule spec {spec!r}: cannot parse {part!r} (use key=value)')
        spec = dict(params, type=typ)
    if not isinstance(spec, Mapping):
        raise ConfigError(f'schedule spec must be a string, int or dict, got {type(spec).__name__}')
    d = dict(spec)
    typ = str(d.pop('type', 'fixed')).lower()
    if typ not in SCHEDULE_TYPES:
        raise ConfigError(f'unknown schedule type {typ!r} (known: {", ".join(SCHEDULE_TYPES)})')
    cls = SCHEDULE_TYPES[typ]
    import inspect
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != 'self']
    bad = [k for k in d if k not in allowed]
    if bad:
        raise ConfigError(f'unknown parameter(s) {bad} for {typ} schedule (allowed: {", ".join(allowed)})')
    return cls(**d)


#: Named presets mirroring EVS Table 2 rows (scale 1 = working resolution equals the input; use
#: ``dataclasses.replace(op, scale=2)`` or ``--scale`` for 2048x1024 input).
PRESETS: dict = _presets()
