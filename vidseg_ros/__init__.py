"""vidseg_ros: keyframe video semantic segmentation with optical-flow propagation for ROS 2."""
__version__ = '0.1.0'
