"""Benchmarks: step-3 throughput (DS-Chat setting) and the largest model that fits in memory."""
