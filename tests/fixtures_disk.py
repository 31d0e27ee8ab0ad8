"""Fixtures: loop devices and tmpfs mounts, when running as root."""
