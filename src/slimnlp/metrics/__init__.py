"""Measurements: task quality, fidelity to the teacher, and efficiency."""
