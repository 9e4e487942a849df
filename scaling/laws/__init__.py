"""Scaling laws fitted to stored run records: pure NumPy/SciPy, never imports jax, draws
nothing (``scaling.report`` draws, ``scaling fit`` prints).

Modules: ``compute`` (L(C) = E + A·C^(−α), the loss-vs-compute law).
"""
