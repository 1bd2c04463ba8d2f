"""The ROS graph, described once: used by ``launch/pipeline.launch.py`` and ``vidseg_graph`` (runner).

``invocations(...)`` returns, for every process of the graph, its node name, executable, Python
module, parameters (the YAML params file first, then overrides) and remappings. The launch file
turns these into ``launch_ros`` actions; the runner into ``--ros-args`` command lines.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vidseg_ros.core.errors import ConfigError, InputError

PACKAGE = 'vidseg_ros'
CAMERA_TOPIC = '/camera/image_raw'

# Topics, as seen from the root namespace (the camera input is the only one meant to be remapped). The
# nodes use them relative (``node_topic``), so a graph started in a namespace (``namespace:=front``: one
# graph per camera) has all of them under it: /front/camera/image_raw, /front/semantic/labels, ... Only
# /diagnostics stays global, as diagnostic aggregators expect; its status names carry the namespace.
FLOW_TOPIC = '/vidseg/flow'
KEYFRAME_LABELS_TOPIC = '/vidseg/keyframe/labels'
KEYFRAME_PROBS_TOPIC = '/vidseg/keyframe/probs'
KEYFRAME_FEATURES_TOPIC = '/vidseg/keyframe/features'   # feature caching: one 32FC(C) map per message
KEYFRAME_DECISION_TOPIC = '/vidseg/keyframe/decision'
KEYFRAME_INFO_TOPIC = '/vidseg/keyframe/info'
SCHEDULE_CMD_TOPIC = '/vidseg/schedule_cmd'
SCHEDULE_STATUS_TOPIC = '/vidseg/schedule_status'
STATS_TOPIC = '/vidseg/propagation/stats'
LABELS_TOPIC = '/semantic/labels'
LABELS_TWO_SIDED_TOPIC = '/semantic/labels_two_sided'   # delayed: fused with the next keyframe (two_sided)
LABELS_COLOR_TOPIC = '/semantic/labels_color'
CONFIDENCE_TOPIC = '/semantic/confidence'
STATUS_TOPIC = '/semantic/status'          # per-frame JSON: degraded + reasons (also for unpublished frames)
CLASSES_TOPIC = '/semantic/classes'
DIAGNOSTICS_TOPIC = '/diagnostics'
#: the graph-internal topics (flow, keyframe results, decisions, stats) start with this
INTERNAL_PREFIX = '/vidseg/'
#: /diagnostics value of every managed node: its internal topics with no peer matched yet (space-separated
#: 'pub:TOPIC' / 'sub:TOPIC'; empty once linked). See ``links_ready``.
LINKS_UNMATCHED_KEY = 'links_unmatched'


_NS_PART = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


def node_topic(topic: str) -> str:
    """The name a node uses for one of the graph's topics: relative, so that it resolves under the node's
    namespace (``/semantic/labels`` -> ``semantic/labels``); /diagnostics stays absolute."""
    return topic if topic == DIAGNOSTICS_TOPIC else topic.lstrip('/')


def in_namespace(namespace: str, name: str) -> str:
    """A topic / node name as resolved in ``namespace``: ``('/front', 'semantic/labels')`` ->
    ``/front/semantic/labels``; absolute names stay as they are."""
    if name.startswith('/'):
        return name
    return f'{namespace.rstrip("/")}/{name}'


def normalize_namespace(namespace: str) -> str:
    """'' (the root) or '/a/b' from 'a/b', '/a/b/' ...; ConfigError for a name ROS would reject."""
    ns = (namespace or '').strip().strip('/')
    if not ns:
        return ''
    if not all(_NS_PART.match(part) for part in ns.split('/')):
        raise ConfigError(f'namespace {namespace!r} is not a valid ROS namespace (letters, digits and _ in '
                          f'/-separated parts that do not start with a digit, e.g. front or car/front)')
    return '/' + ns


def status_name(qualified_name: str) -> str:
    """The /diagnostics status name of a node by its fully qualified name: ``vidseg: flow_node`` in the
    root namespace, ``vidseg: front/flow_node`` in /front."""
    return f'vidseg: {qualified_name.lstrip("/")}'


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    module: str
    lifecycle: bool = True
    camera_input: bool = False


#: Managed nodes in activation order (the manager deactivates in reverse).
MANAGED_NODES = (
    NodeSpec('flow_node', 'flow_node', 'vidseg_ros.ros.flow_node', camera_input=True),
    NodeSpec('keyframe_node', 'keyframe_node', 'vidseg_ros.ros.keyframe_node', camera_input=True),
    NodeSpec('propagation_node', 'propagation_node', 'vidseg_ros.ros.propagation_node', camera_input=True),
)
MANAGER = NodeSpec('lifecycle_manager', 'lifecycle_manager', 'vidseg_ros.ros.manager', lifecycle=False)
NODES = MANAGED_NODES + (MANAGER,)

#: Launch arguments (name, default, description); '' means "keep the value from the config file".
LAUNCH_ARGUMENTS = (
    ('camera_topic', CAMERA_TOPIC, 'camera image topic (sensor_msgs/Image) remapped onto /camera/image_raw '
                                   '(relative: in the namespace)'),
    ('namespace', '', 'ROS namespace of the graph: its nodes and topics (not /diagnostics) go under it, e.g. '
                      'front -> /front/semantic/labels; one graph per camera'),
    ('config', '', 'parameters YAML (default: share/vidseg_ros/config/pipeline.yaml)'),
    ('use_sim_time', 'false', 'use /clock (set true when replaying bags with vidseg_bag_play --clock)'),
    ('model', '', 'keyframe model: registry name or path (default: from the config)'),
    ('weights', '', 'keyframe model weights (default: from the config)'),
    ('device', '', 'keyframe model device, e.g. cpu or cuda (default: from the config)'),
    ('schedule', '', "keyframe schedule, e.g. 'fixed:5', 'adaptive:10', 'budget:camera_rate_hz=10'"),
    ('operating_point', '', 'EVS operating point preset (sets scale, schedule, warp, refine)'),
    ('temporal_mode', '', 'propagation mode of the propagation node: warp, iam-lowres, refiner, grfp, '
                          'davss, region, region-ctx, cache1 or cache2 (default: from the config)'),
    ('two_sided', '', 'true: also publish ' + LABELS_TWO_SIDED_TOPIC + ', each frame delayed until the next '
                      'keyframe and fused with it carried back (temporal_mode warp, region or region-ctx; '
                      'default: from the config)'),
    ('two_sided_max_wait_s', '', 'with two_sided: seconds a frame may wait for the next keyframe before it goes '
                                 'out forward-only on the two-sided topic (0 = no time bound; default: from '
                                 'the config)'),
    ('keyframe_wait', '', 'seconds a frame announced as a keyframe waits for the network before it is '
                          'propagated from the previous keyframe (the config: 0.3, the offline accuracy while '
                          'results come within it, BENCHMARKS section 9.1; 0 = never wait: live mode, lowest '
                          'latency, labels from an older keyframe)'),
)

#: temporal modes the propagation node runs (cache1/cache2: with the keyframe node's cached maps)
NODE_TEMPORAL_MODES = ('warp', 'iam-lowres', 'refiner', 'grfp', 'davss', 'region', 'region-ctx', 'cache1', 'cache2')
#: feature caching: the keyframe node publishes this many levels of cached maps for the propagation node
CACHE_LEVELS = {'cache1': 1, 'cache2': 2}
FEATURE_MAP_TAG = '#map='   # features' header.frame_id = camera frame_id + FEATURE_MAP_TAG + map name


@dataclass
class Invocation:
    name: str
    executable: str
    module: str
    lifecycle: bool
    parameters: list = field(default_factory=list)   # [params_file_path, {overrides}]
    remappings: list = field(default_factory=list)   # [(from, to)]
    namespace: str = ''                               # '' = the root, else '/front' ...


def config_file(name: str) -> str:
    """share/vidseg_ros/config/<name> via the ament index, else the source tree's, else the one pip
    installed under ``sys.prefix``."""
    try:
        from ament_index_python.packages import get_package_share_directory
        p = Path(get_package_share_directory(PACKAGE)) / 'config' / name
        if p.is_file():
            return str(p)
    except Exception:  # not installed / AMENT_PREFIX_PATH not set
        pass
    import sys
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / 'config' / name, here.parent / 'config' / name,
                 Path(sys.prefix) / 'share' / PACKAGE / 'config' / name):  # pip data_files
        if cand.is_file():
            return str(cand)
    raise InputError(f'config/{name} not found (install the package or pass --config)')


def default_config_path() -> str:
    """The default parameters file config/pipeline.yaml."""
    return config_file('pipeline.yaml')


def fastdds_profile_env() -> dict:
    """{'FASTDDS_DEFAULT_PROFILES_FILE': config/fastdds.xml} unless a Fast DDS profile is already
    chosen (the profile enlarges the shared-memory segment so camera images are not lost)."""
    if os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE') or os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE'):
        return {}
    try:
        return {'FASTDDS_DEFAULT_PROFILES_FILE': config_file('fastdds.xml')}
    except InputError:
        return {}


def _truthy(v) -> bool:
    return str(v).strip().lower() in ('1', 'true', 'yes', 'on')


def invocations(camera_topic: str = CAMERA_TOPIC, config: str = '', use_sim_time=False,
                model: str = '', weights: str = '', device: str = '', schedule: str = '',
                operating_point: str = '', temporal_mode: str = '', two_sided='',
                two_sided_max_wait_s='', keyframe_wait='', namespace: str = '') -> list:
    """The processes of the graph (managed nodes in activation order, then the manager), in ``namespace``
    ('' = the root). A relative ``camera_topic`` resolves in the namespace, an absolute one does not."""
    config = config or default_config_path()
    if not Path(config).is_file():
        raise InputError(f'config file not found: {config}')
    namespace = normalize_namespace(namespace)
    camera_topic = (camera_topic or CAMERA_TOPIC).strip()
    if not namespace and not camera_topic.startswith('/'):
        camera_topic = '/' + camera_topic
    common = {'use_sim_time': _truthy(use_sim_time)}
    per_node = {s.name: dict(common) for s in NODES}
    if operating_point:
        from vidseg_ros.core.schedule import get_operating_point
        op = get_operating_point(operating_point)
        sched = op.schedule if op.schedule is not None else f'fixed:{op.interval}'
        if not isinstance(sched, str):
            import json
            sched = json.dumps(sched)
        for n in ('flow_node', 'keyframe_node', 'propagation_node'):
            per_node[n]['scale'] = op.scale
        per_node['keyframe_node']['schedule'] = sched
        per_node['propagation_node'].update(warp=op.warp, refine=op.refine)
    if schedule:
        from vidseg_ros.core.schedule import make_schedule
        make_schedule(_parse_schedule(schedule))  # validate early: ConfigError names the problem
        per_node['keyframe_node']['schedule'] = schedule
    if temporal_mode:
        if temporal_mode not in NODE_TEMPORAL_MODES:
            raise ConfigError(f'temporal_mode {temporal_mode!r} is not available in the propagation node '
                              f'(use one of {", ".join(NODE_TEMPORAL_MODES)})')
        per_node['propagation_node']['temporal_mode'] = temporal_mode
        if temporal_mode in CACHE_LEVELS:   # the keyframe node must send its cached maps
            per_node['keyframe_node']['cache_levels'] = CACHE_LEVELS[temporal_mode]
        if temporal_mode == 'region-ctx':   # ... or its context grids
            per_node['keyframe_node']['region_context'] = True
    if str(two_sided).strip():
        per_node['propagation_node']['two_sided'] = _truthy(two_sided)
    for key, val in (('two_sided_max_wait_s', two_sided_max_wait_s), ('keyframe_wait', keyframe_wait)):
        if str(val).strip():
            per_node['propagation_node'][key] = _seconds(key, val)
    for key, val in (('model', model), ('weights', weights), ('device', device)):
        if val:  # the propagation node's refiner (refine:=true) uses the same network
            per_node['keyframe_node'][key] = val
            per_node['propagation_node'][key] = val
    out = []
    cam = node_topic(CAMERA_TOPIC)   # the rule's match is relative: it then holds in any namespace
    for spec in NODES:
        remaps = [(cam, camera_topic)] if spec.camera_input and camera_topic not in (CAMERA_TOPIC, cam) else []
        out.append(Invocation(spec.name, spec.executable, spec.module, spec.lifecycle,
                              [config, per_node[spec.name]], remaps, namespace))
    return out


def _seconds(name: str, text) -> float:
    """A launch argument in seconds, 0-3600; ConfigError naming it otherwise."""
    try:
        v = float(text)
    except ValueError:
        v = float('nan')
    if not 0.0 <= v <= 3600.0:
        raise ConfigError(f'{name} must be seconds in [0, 3600], got {text!r}')
    return v


def _parse_schedule(text: str):
    """A schedule parameter: JSON dict text or the string spec."""
    t = str(text).strip()
    if t.startswith('{'):
        import json
        try:
            return json.loads(t)
        except ValueError as e:
            raise ConfigError(f'schedule {t!r} is not valid JSON ({e})') from None
    return t


parse_schedule = _parse_schedule


def ros_args(inv: Invocation) -> list:
    """``--ros-args`` for one invocation: node name, params file, ``-p`` overrides, ``-r`` remaps."""
    import yaml
    args = ['--ros-args', '-r', f'__node:={inv.name}']
    if inv.namespace:
        args += ['-r', f'__ns:={inv.namespace}']
    for p in inv.parameters:
        if isinstance(p, (str, os.PathLike)):
            args += ['--params-file', str(p)]
        else:
            for k, v in p.items():
                val = yaml.safe_dump(v, default_flow_style=True, width=1 << 16).strip()
                if val.endswith('\n...') or val.endswith(' ...'):
                    val = val[:-4].strip()
                args += ['-p', f'{k}:={val}']
    for src, dst in inv.remappings:
        args += ['-r', f'{src}:={dst}']
    return args


def links_ready(diagnostics: dict, nodes=None) -> tuple:
    """(ready, what is missing) from the latest /diagnostics values by status name (``{'vidseg: flow_node':
    {key: value}}``): ready once every managed node (or ``nodes``) has reported and reports no unmatched
    internal link. Messages on those topics are volatile, so a frame sent before the flow and keyframe
    topics are matched both ways can lose its flow or keyframe result (seen as 'flow_missing' /
    'no_keyframe' on the first frames of a deterministic run)."""
    missing = []
    for n in nodes or [s.name for s in MANAGED_NODES]:
        values = diagnostics.get(status_name(n))
        if values is None or LINKS_UNMATCHED_KEY not in values:
            missing.append(f'{n}: no diagnostics yet')
        elif values[LINKS_UNMATCHED_KEY]:
            missing.append(f'{n}: {values[LINKS_UNMATCHED_KEY]}')
    return not missing, '; '.join(missing)
