"""Launch the vidseg_ros graph: flow_node, keyframe_node, propagation_node (lifecycle) + lifecycle_manager.

    ros2 launch vidseg_ros pipeline.launch.py camera_topic:=/kitti/camera_color_left/image_raw \\
        model:=espnetv2_s2.0 schedule:=fixed:5 use_sim_time:=true

One graph per camera: ``namespace:=front camera_topic:=/cams/front/image_raw`` puts the nodes and
their topics under /front (/front/semantic/labels, ...). The node namespace is given relative, so a
namespace pushed by an including launch file (PushRosNamespace) is prefixed to it by launch_ros (not run
here: launch_ros is not installable on the development machine).

The processes, parameters and remappings come from ``vidseg_ros.ros.graph`` (the same description
``vidseg_graph`` uses without ros2 launch). Empty arguments keep the config file's values.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from vidseg_ros.ros import graph, shm


def _truthy(text):
    return str(text).strip().lower() in ('1', 'true', 'yes', 'on')


def launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in graph.LAUNCH_ARGUMENTS}
    respawn = _truthy(LaunchConfiguration('respawn').perform(context))
    log_level = LaunchConfiguration('log_level').perform(context)
    if _truthy(LaunchConfiguration('shm_clean').perform(context)):
        # shared memory that killed Fast DDS participants left behind (a live one's files are kept)
        rep = shm.clean_stale_fastdds_shm()
        if rep.removed or rep.errors:
            print(f'[vidseg_ros] removed {rep.summary()}', flush=True)
    # Fast DDS profile with a large shared-memory segment (config/fastdds.xml), unless one is set
    actions = [SetEnvironmentVariable(k, v) for k, v in graph.fastdds_profile_env().items()]
    for inv in graph.invocations(**values):
        # relative, so that it composes with a namespace pushed by an including launch file
        common = dict(package=graph.PACKAGE, executable=inv.executable, name=inv.name,
                      namespace=inv.namespace.lstrip('/'),
                      parameters=inv.parameters, remappings=inv.remappings, output='screen',
                      arguments=['--ros-args', '--log-level', log_level])
        if inv.lifecycle:
            actions.append(LifecycleNode(respawn=respawn, respawn_delay=2.0, **common))
        else:
            actions.append(Node(**common))
    return actions


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, default, desc in graph.LAUNCH_ARGUMENTS]
    args.append(DeclareLaunchArgument('respawn', default_value='true',
                                      description='restart a node that exits (the manager re-activates it)'))
    args.append(DeclareLaunchArgument('shm_clean', default_value='true',
                                      description='first remove the /dev/shm data segments of Fast DDS '
                                                  'participants that were killed (vidseg shm-clean)'))
    args.append(DeclareLaunchArgument('log_level', default_value='info', description='ROS log level'))
    return LaunchDescription(args + [OpaqueFunction(function=launch_setup)])
