"""launch/pipeline.launch.py: compiles, and (with fake launch/launch_ros modules) declares the same
processes, parameters and remappings as the vidseg_graph runner (both come from ros/graph.py)."""
import importlib.util
import py_compile
import sys
import types
from pathlib import Path

import pytest

from vidseg_ros.ros import graph, runner, shm

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'pipeline.launch.py'


class _Rec:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


# Signatures of the real launch / launch_ros (Humble and later) constructors the launch file calls: the
# fakes refuse any argument these do not accept (a misspelt or removed keyword fails here, not only on a
# real `ros2 launch`).
_EXECUTE_PROCESS_KW = {'name', 'cwd', 'env', 'additional_env', 'shell', 'sigterm_timeout', 'sigkill_timeout',
                       'emulate_tty', 'output', 'output_format', 'log_cmd', 'cached_output', 'on_exit',
                       'respawn', 'respawn_delay', 'respawn_max_retries', 'prefix'}


@pytest.fixture(autouse=True)
def shm_cleans(monkeypatch):
    """The launch file's stale shared-memory pass, recorded instead of run on the real /dev/shm."""
    calls = []
    monkeypatch.setattr(shm, 'clean_stale_fastdds_shm', lambda *a, **k: calls.append((a, k)) or shm.CleanReport())
    return calls


def _launch_description(initial_entities=None):
    pass


def _declare_launch_argument(name, *, default_value=None, description=None, choices=None):
    pass


def _opaque_function(*, function, args=None, kwargs=None):
    pass


def _set_environment_variable(name, value):
    pass


def _node(*, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
          remappings=None, ros_arguments=None, arguments=None, **kwargs):
    unknown = set(kwargs) - _EXECUTE_PROCESS_KW
    if unknown:
        raise TypeError(f'Node/ExecuteProcess got unexpected keyword arguments {sorted(unknown)}')
    if parameters is not None and not isinstance(parameters, list):
        raise TypeError('Node parameters must be a list')


def _lifecycle_node(*, name, namespace, **kwargs):
    _node(name=name, namespace=namespace, **kwargs)


def _checked(cls_name, signature):
    def init(self, *args, **kwargs):
        signature(*args, **kwargs)
        _Rec.__init__(self, *args, **kwargs)
    return type(cls_name, (_Rec,), {'__init__': init})


def _fake_modules():
    mods = {name: types.ModuleType(name) for name in
            ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros', 'launch_ros.actions')}
    mods['launch'].LaunchDescription = _checked('LaunchDescription', _launch_description)
    for cls, sig in (('DeclareLaunchArgument', _declare_launch_argument), ('OpaqueFunction', _opaque_function),
                     ('SetEnvironmentVariable', _set_environment_variable)):
        setattr(mods['launch.actions'], cls, _checked(cls, sig))
    mods['launch.substitutions'].LaunchConfiguration = _LaunchConfiguration
    for cls, sig in (('LifecycleNode', _lifecycle_node), ('Node', _node)):
        setattr(mods['launch_ros.actions'], cls, _checked(cls, sig))
    mods['launch'].actions = mods['launch.actions']
    mods['launch'].substitutions = mods['launch.substitutions']
    mods['launch_ros'].actions = mods['launch_ros.actions']
    return mods


def _load(monkeypatch):
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('pipeline_launch', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _expand(mod, **overrides):
    ld = mod.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0] if e.args else e.kwargs['name']: e.kwargs['default_value']
                for e in entities if type(e).__name__ == 'DeclareLaunchArgument'}
    ctx = types.SimpleNamespace(launch_configurations=dict(declared, **overrides))
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    assert len(opaque) == 1
    return declared, opaque[0].kwargs['function'](ctx)


def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH), doraise=True)


def test_launch_declares_arguments(monkeypatch):
    declared, _ = _expand(_load(monkeypatch))
    for name in ('camera_topic', 'config', 'use_sim_time', 'model', 'schedule', 'operating_point', 'temporal_mode',
                 'respawn'):
        assert name in declared
    assert declared['camera_topic'] == '/camera/image_raw'


@pytest.mark.parametrize('overrides,cli', [
    ({}, []),
    ({'camera_topic': '/kitti/camera_color_left/image_raw', 'model': 'espnetv2_s0.5_512x256',
      'schedule': 'fixed:3', 'use_sim_time': 'true'},
     ['--camera-topic', '/kitti/camera_color_left/image_raw', '--model', 'espnetv2_s0.5_512x256',
      '--schedule', 'fixed:3', '--use-sim-time']),
    ({'operating_point': 'warp_s5'}, ['--operating-point', 'warp_s5']),
    ({'temporal_mode': 'region'}, ['--temporal-mode', 'region']),
    ({'temporal_mode': 'cache2'}, ['--temporal-mode', 'cache2']),
    ({'two_sided': 'true', 'two_sided_max_wait_s': '0.45'}, ['--two-sided', '--two-sided-max-wait', '0.45']),
    ({'keyframe_wait': '0'}, ['--keyframe-wait', '0']),
    ({'keyframe_wait': '0.15'}, ['--keyframe-wait', '0.15']),
    ({'namespace': 'front', 'camera_topic': 'image_raw'}, ['--namespace', 'front', '--camera-topic', 'image_raw']),
])
def test_launch_matches_runner_graph(monkeypatch, overrides, cli):
    _, actions = _expand(_load(monkeypatch), **overrides)
    actions = [a for a in actions if type(a).__name__ in ('LifecycleNode', 'Node')]
    cmds = runner.commands(runner.build_parser().parse_args(cli))
    assert len(actions) == len(cmds) == len(graph.NODES)
    for act, (inv, argv) in zip(actions, cmds):
        kw = act.kwargs
        assert type(act).__name__ == ('LifecycleNode' if inv.lifecycle else 'Node')
        assert kw['package'] == 'vidseg_ros' and kw['namespace'] == overrides.get('namespace', '')
        assert inv.namespace == ('/' + overrides['namespace'] if overrides.get('namespace') else '')
        assert ('__ns:=/front' in argv) == bool(overrides.get('namespace'))
        assert (kw['name'], kw['executable']) == (inv.name, inv.executable)
        assert kw['parameters'] == inv.parameters
        assert kw['remappings'] == inv.remappings
        # the runner's command line carries exactly these parameters and remappings
        assert argv[argv.index('--params-file') + 1] == inv.parameters[0]
        for k in inv.parameters[1]:
            assert any(a.startswith(f'{k}:=') for a in argv)
        for src, dst in inv.remappings:
            assert f'{src}:={dst}' in argv
    names = [a.kwargs['name'] for a in actions]
    assert names == ['flow_node', 'keyframe_node', 'propagation_node', 'lifecycle_manager']
    camera_nodes = {a.kwargs['name'] for a in actions if a.kwargs['remappings']}
    if overrides.get('camera_topic'):
        assert camera_nodes == {'flow_node', 'keyframe_node', 'propagation_node'}
        # relative, so that the rule matches the node's topic in its namespace; a relative camera topic
        # given with a namespace resolves in it (/front/image_raw), one without it in the root
        assert actions[0].kwargs['remappings'] == [('camera/image_raw', overrides['camera_topic'])]
    if overrides.get('schedule'):
        assert actions[1].kwargs['parameters'][1]['schedule'] == 'fixed:3'
        assert all(a.kwargs['parameters'][1]['use_sim_time'] is True for a in actions)
    if overrides.get('operating_point'):
        assert actions[1].kwargs['parameters'][1]['schedule'] == 'fixed:5'
    if overrides.get('temporal_mode'):
        assert actions[2].kwargs['parameters'][1]['temporal_mode'] == overrides['temporal_mode']
        # feature caching: the keyframe node sends its cached maps (the levels the mode reuses)
        assert actions[1].kwargs['parameters'][1].get('cache_levels') == \
            {'cache2': 2}.get(overrides['temporal_mode'])
    else:
        assert all('temporal_mode' not in a.kwargs['parameters'][1] for a in actions)
    prop = actions[2].kwargs['parameters'][1]
    if overrides.get('two_sided'):
        assert prop['two_sided'] is True and prop['two_sided_max_wait_s'] == 0.45
    else:
        assert 'two_sided' not in prop and 'two_sided_max_wait_s' not in prop
    if 'keyframe_wait' in overrides:
        assert prop['keyframe_wait'] == float(overrides['keyframe_wait'])   # 0: live mode, explicitly
    else:
        assert 'keyframe_wait' not in prop   # the config's value (0.3)


def test_bad_schedule_is_a_clear_error(monkeypatch):
    from vidseg_ros.core.errors import ConfigError
    mod = _load(monkeypatch)
    with pytest.raises(ConfigError, match='interval'):
        _expand(mod, schedule='fixed:0')
    for bad in ('-1', 'soon', 'nan'):
        with pytest.raises(ConfigError, match='two_sided_max_wait_s'):
            _expand(mod, two_sided='true', two_sided_max_wait_s=bad)
        with pytest.raises(ConfigError, match='keyframe_wait'):
            _expand(mod, keyframe_wait=bad)
    assert runner.main(['--schedule', 'fixed:0']) == 2
    assert runner.main(['--param', 'nonode:x=1']) == 2
    with pytest.raises(ConfigError, match="temporal_mode 'magic' is not available in the propagation node"):
        _expand(mod, temporal_mode='magic')


def test_config_yaml_matches_declared_parameters(ros_domain):
    """Every parameter in config/pipeline.yaml is one the node declares (typos would be ignored)."""
    import yaml
    cfg = yaml.safe_load(Path(graph.default_config_path()).read_text())
    assert set(cfg) == {s.name for s in graph.NODES}
    pytest.importorskip('rclpy')
    import rclpy
    from vidseg_ros.ros.flow_node import FlowNode
    from vidseg_ros.ros.keyframe_node import KeyframeNode
    from vidseg_ros.ros.manager import LifecycleManager
    from vidseg_ros.ros.propagation_node import PropagationNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        for cls, name in ((FlowNode, 'flow_node'), (KeyframeNode, 'keyframe_node'),
                          (PropagationNode, 'propagation_node'), (LifecycleManager, 'lifecycle_manager')):
            kw = {'context': ctx}
            if cls is LifecycleManager:
                from rclpy.parameter import Parameter
                kw['parameter_overrides'] = [Parameter('autostart', Parameter.Type.BOOL, False)]
            node = cls(**kw)
            try:
                declared = set(node._parameters)
                assert set(cfg[name]['ros__parameters']) <= declared, name
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_launch_sets_the_fastdds_profile_unless_one_is_set(monkeypatch):
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.delenv('FASTRTPS_DEFAULT_PROFILES_FILE', raising=False)
    _, actions = _expand(_load(monkeypatch))
    env = [a for a in actions if type(a).__name__ == 'SetEnvironmentVariable']
    assert len(env) == 1 and env[0].args[0] == 'FASTDDS_DEFAULT_PROFILES_FILE'
    assert env[0].args[1].endswith('fastdds.xml') and 'segment_size' in open(env[0].args[1]).read()
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/somewhere/else.xml')
    _, actions = _expand(_load(monkeypatch))
    assert not [a for a in actions if type(a).__name__ == 'SetEnvironmentVariable']


def test_launch_cleans_stale_shared_memory_unless_told_not_to(monkeypatch, shm_cleans):
    declared, _ = _expand(_load(monkeypatch))
    assert declared['shm_clean'] == 'true' and len(shm_cleans) == 1
    _expand(_load(monkeypatch), shm_clean='false')
    assert len(shm_cleans) == 1


def test_links_ready_needs_every_node_reporting_no_unmatched_link():
    key = graph.LINKS_UNMATCHED_KEY
    linked = {f'vidseg: {s.name}': {key: '', 'frames': '3'} for s in graph.MANAGED_NODES}
    assert graph.links_ready(linked) == (True, '')
    # a node not heard from yet, or one without the key (an older node), is not ready
    partial = {k: v for k, v in linked.items() if 'keyframe' not in k}
    assert graph.links_ready(partial) == (False, 'keyframe_node: no diagnostics yet')
    assert graph.links_ready(dict(linked, **{'vidseg: flow_node': {'frames': '3'}}))[0] is False
    unmatched = dict(linked, **{'vidseg: propagation_node': {key: 'sub:/vidseg/flow sub:/vidseg/keyframe/labels'}})
    assert graph.links_ready(unmatched) == \
        (False, 'propagation_node: sub:/vidseg/flow sub:/vidseg/keyframe/labels')
    assert graph.links_ready(unmatched, nodes=['flow_node']) == (True, '')


def test_namespace_argument_is_checked_and_resolves_topics():
    """namespace:= must be a ROS namespace (one graph per camera); the nodes' topics are relative so that
    they resolve under it, /diagnostics stays global."""
    from vidseg_ros.core.errors import ConfigError
    assert graph.normalize_namespace('') == '' and graph.normalize_namespace('/') == ''
    assert graph.normalize_namespace('front') == graph.normalize_namespace('/front/') == '/front'
    assert graph.normalize_namespace('car/front_1') == '/car/front_1'
    for bad in ('1cam', 'front cam', 'a//b', 'a-b'):
        with pytest.raises(ConfigError, match='is not a valid ROS namespace'):
            graph.invocations(namespace=bad)
    assert graph.node_topic(graph.LABELS_TOPIC) == 'semantic/labels'
    assert graph.node_topic(graph.DIAGNOSTICS_TOPIC) == '/diagnostics'
    assert graph.in_namespace('/front', 'semantic/labels') == '/front/semantic/labels'
    assert graph.in_namespace('/', 'semantic/labels') == '/semantic/labels'
    assert graph.in_namespace('/front', '/cams/x') == '/cams/x'
    assert graph.status_name('/front/flow_node') == 'vidseg: front/flow_node'
    assert graph.status_name('/flow_node') == 'vidseg: flow_node'
    # an absolute camera topic stays absolute in a namespace, a relative one resolves in it (root: made absolute)
    inv = graph.invocations(namespace='front', camera_topic='/cams/front/image_raw')[0]
    assert inv.namespace == '/front' and inv.remappings == [('camera/image_raw', '/cams/front/image_raw')]
    assert graph.invocations(camera_topic='cams/x')[0].remappings == [('camera/image_raw', '/cams/x')]
    assert graph.invocations(namespace='front')[0].remappings == []
