"""Thin rclpy lifecycle nodes over vidseg_ros.core."""
