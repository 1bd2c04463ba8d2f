"""ament_python package vidseg_ros (also installable with plain pip).

colcon (`setup.py install/develop`) puts the console scripts into
``lib/vidseg_ros`` (see setup.cfg) where ``ros2 run`` and launch_ros look.
pip builds a wheel, which ignores setup.cfg's script_dir, so the same node
executables are also shipped as data_files under ``lib/vidseg_ros`` (thin
wrappers in ``scripts/lib``) and the console scripts land in ``bin/``.
"""
from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'vidseg_ros'

NODE_EXECUTABLES = {
    'flow_node': 'vidseg_ros.ros.flow_node:main',
    'keyframe_node': 'vidseg_ros.ros.keyframe_node:main',
    'propagation_node': 'vidseg_ros.ros.propagation_node:main',
    'lifecycle_manager': 'vidseg_ros.ros.manager:main',
}

console_scripts = [f'{name} = {target}' for name, target in NODE_EXECUTABLES.items()]
console_scripts += [
    'vidseg = vidseg_ros.cli:main',
    'vidseg_graph = vidseg_ros.ros.runner:main',
    'vidseg_bag_play = vidseg_ros.ros.bag_replay:main',
    'vidseg_demo = vidseg_ros.demo:main',
    'vidseg_soak = vidseg_ros.ros.soak:main',
]


def _files(pattern):
    return [f for f in glob(pattern) if os.path.isfile(f)]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={'vidseg_ros': ['weights/*.pt', 'weights/*.pth', 'weights/*.json',
                                 'weights/*.md', 'weights/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', _files('launch/*.py')),
        ('share/' + package_name + '/config', _files('config/*.yaml') + _files('config/*.xml')),
        ('lib/' + package_name, _files('scripts/lib/*')),
    ],
    install_requires=['setuptools', 'numpy', 'opencv-python-headless', 'pyyaml', 'tqdm'],
    zip_safe=True,
    maintainer='vidseg_ros developers',
    maintainer_email='vidseg@example.com',
    description='Keyframe video semantic segmentation with optical-flow propagation for ROS 2',
    license='MIT',
    tests_require=['pytest'],
    entry_points={'console_scripts': console_scripts},
)
