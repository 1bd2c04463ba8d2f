"""The graph split over two network namespaces ("two machines" on one host).

``ip netns`` creates a "gpu" namespace (keyframe_node only) and a "vehicle" namespace (flow_node,
propagation_node, lifecycle_manager and the camera publisher / label recorder, graph_bench
--external-graph), joined by a veth pair 10.77.0.1/24 <-> 10.77.0.2/24 (nothing else: each namespace
has only its loopback and its veth end). DDS settings (documented in docs/ROS.md "Across machines"):
ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET + ROS_STATIC_PEERS=<the other side's address> (unicast discovery,
no multicast needed), one ROS_DOMAIN_ID, and a Fast DDS profile with UDPv4 only (the shared-memory
transport would silently bypass the network between namespaces of one host, see the docs).

Asserts: the manager in the vehicle namespace activates the keyframe node in the gpu namespace, every
frame gets its labels, keyframe results arrive in the vehicle namespace from the keyframe node that runs
only in the gpu namespace, and the bytes crossed the veth link. Skips when ``ip netns`` is not permitted.
Namespaces and processes are always removed.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros.testing import node_env, read_log, start_process, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(180)]

GPU_IP, VEH_IP = '10.77.0.1', '10.77.0.2'

UDP_ONLY_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>vidseg_udp</transport_id>
        <type>UDPv4</type>
        <sendBufferSize>4194304</sendBufferSize>
        <receiveBufferSize>4194304</receiveBufferSize>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="vidseg_participant" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>vidseg_udp</transport_id></userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def _ip(*args, check=True):
    return subprocess.run(['ip', *args], capture_output=True, text=True, timeout=20, check=check)


def _netns_available():
    if shutil.which('ip') is None:
        return 'the ip command (iproute2) is not installed'
    if os.geteuid() != 0:
        return 'ip netns needs root'
    name = f'vsprobe{os.getpid()}'
    r = _ip('netns', 'add', name, check=False)
    if r.returncode != 0:
        return f'ip netns add is not permitted here: {r.stderr.strip()}'
    _ip('netns', 'del', name, check=False)
    return None


def _tx_bytes(ns, dev):
    out = _ip('-n', ns, '-j', '-s', 'link', 'show', dev).stdout
    return int(json.loads(out)[0]['stats64']['tx']['bytes'])


def test_graph_across_network_namespaces(ros_domain, shared, tmp_path):
    why = _netns_available()
    if why:
        pytest.skip(why)
    tag = os.getpid() % 100000
    gpu, veh = f'vs_gpu{tag}', f'vs_veh{tag}'
    dev_g, dev_v = f'vsg{tag}', f'vsv{tag}'
    procs = []
    try:
        _ip('netns', 'add', gpu)
        _ip('netns', 'add', veh)
        _ip('link', 'add', dev_g, 'type', 'veth', 'peer', 'name', dev_v)
        for ns, dev, ip in ((gpu, dev_g, GPU_IP), (veh, dev_v, VEH_IP)):
            _ip('link', 'set', dev, 'netns', ns)
            _ip('-n', ns, 'addr', 'add', f'{ip}/24', 'dev', dev)
            _ip('-n', ns, 'link', 'set', dev, 'up')
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
        profile = tmp_path / 'fastdds_udp.xml'
        profile.write_text(UDP_ONLY_PROFILE)
        base = {'ROS_DOMAIN_ID': str(ros_domain), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp', 'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
        env_g = node_env(dict(base, ROS_STATIC_PEERS=VEH_IP))
        env_v = node_env(dict(base, ROS_STATIC_PEERS=GPU_IP))
        # VIDSEG_NETNS_TRANSPORT: 'udp' (default, the profile above), 'large_data' (Fast DDS builtin
        # LARGE_DATA: UDP discovery, TCP + SHM data) or 'builtin' (Fast DDS defaults: SHM + UDP)
        transport = os.environ.get('VIDSEG_NETNS_TRANSPORT', 'udp')
        for env in (env_g, env_v):
            env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
            env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SUBNET'
            if transport != 'udp':
                env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
            if transport == 'large_data':
                env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'

        from vidseg_ros.ros import runner
        args = runner.build_parser().parse_args(
            ['--schedule', 'fixed:4', '--param', 'keyframe_node:num_threads=1',
             '--param', 'keyframe_node:backend=onnxruntime'] +
            sum((['--param', f'{n}:input_qos=reliable'] for n in ('flow_node', 'keyframe_node',
                                                                   'propagation_node')), []))
        logs = tmp_path / 'logs'
        logs.mkdir()
        where = {}
        for inv, argv in runner.commands(args):
            ns = gpu if inv.name == 'keyframe_node' else veh
            where[inv.name] = ns
            p = start_process(['ip', 'netns', 'exec', ns] + argv, str(logs / f'{inv.name}.log'),
                              env_g if ns == gpu else env_v)
            procs.append(p)
        tx0 = _tx_bytes(gpu, dev_g)
        out = tmp_path / 'probe.json'
        bench = start_process(['ip', 'netns', 'exec', veh, sys.executable, '-m', 'vidseg_ros.ros.graph_bench',
                               '--external-graph', '--frames', '24', '--rate', '4', '--resize', '480x270',
                               '--warmup', '2', '--settle', '5', '--startup-timeout', '90', '--quiet',
                               '--out', str(out)], str(tmp_path / 'probe.log'), env_v)
        procs.append(bench)
        try:
            bench.wait(150)
        except subprocess.TimeoutExpired:
            pass

        def logs_text():
            return '\n'.join([f'--- probe\n{read_log(bench)[-3000:]}'] +
                             [f'--- {f.name}\n{f.read_text(errors="replace")[-2000:]}'
                              for f in sorted(logs.glob('*.log'))])
        assert bench.returncode == 0 and out.is_file(), logs_text()
        r = json.loads(out.read_text())
        paced = r['paced']
        # every frame labelled, at the input size
        assert paced['frames_out'] == paced['frames_in'] == 24, (paced, logs_text())
        assert r['label_sizes'] == [[480, 270, 'mono8']]
        assert len(r['label_classes_seen']) > 2  # a real segmentation, not a constant map
        # keyframe results came over the link from the gpu namespace's keyframe node
        assert paced['keyframes'] >= 4, paced
        assert r['keyframe_publishers'] == ['/keyframe_node'], r['keyframe_publishers']
        assert where['keyframe_node'] == gpu and all(where[n] == veh for n in where if n != 'keyframe_node')
        veh_pids = set(_ip('netns', 'pids', veh).stdout.split())
        gpu_pids = set(_ip('netns', 'pids', gpu).stdout.split())
        kf_proc = procs[[inv.name for inv, _ in runner.commands(args)].index('keyframe_node')]
        assert str(kf_proc.pid) in gpu_pids and str(kf_proc.pid) not in veh_pids
        # keyframes are labels (480x270) + probs (K x 120x68 uint8) per keyframe: at least that crossed
        sent = _tx_bytes(gpu, dev_g) - tx0
        print(f'transport {transport}: {sent} bytes gpu->vehicle over the veth, {paced["keyframes"]} keyframes, '
              f'latency median {paced.get("latency_median_ms", 0):.1f} ms')
        assert sent > paced['keyframes'] * 480 * 270, sent
    finally:
        stop_processes(list(reversed(procs)), grace=10)
        for ns in (gpu, veh):
            _ip('netns', 'del', ns, check=False)
        _ip('link', 'del', dev_g, check=False)
