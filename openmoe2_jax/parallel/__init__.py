"""Parallelism: the device mesh and the logical-axis rules (models never name a mesh axis)."""
