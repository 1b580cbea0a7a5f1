"""Benchmarks of issue 8: TPA measured against the machine's own limits in the same run.

``python -m bench --size county|province|N --repeat 3 --out bench/results`` (see README.md)."""
