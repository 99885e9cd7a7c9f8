"""Deterministic synthetic data for development and benchmarks (``echotune-seed``)."""
