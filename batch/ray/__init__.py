"""Batch scoring on a Ray cluster (`anomaly score --engine ray`): see `batch.ray.engine`."""
