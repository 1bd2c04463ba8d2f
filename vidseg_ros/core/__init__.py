"""ROS-free core: models, flow, warping, IAM, schedules, metrics (see docs/DESIGN.md)."""
