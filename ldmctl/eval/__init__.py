"""Metrics (pure functions over tensors) and evaluation reports."""
