"""Anomaly detection for dashcam footage."""

__version__ = "0.1.0"
