"""Benchmarks (scripts, not tests); results go to bench/results/ (not versioned)."""
