"""Tests: see the README (Tests and benchmarks)."""
