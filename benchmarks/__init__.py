"""Kernel microbenchmarks. `python -m benchmarks` runs the suite on the current device (see __main__)."""
