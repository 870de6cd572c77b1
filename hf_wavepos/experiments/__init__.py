"""Benchmarks and demos built on the library: each is a command of ``wavepos`` with committed results."""
