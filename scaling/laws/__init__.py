"""Scaling laws fitted to stored run records: pure NumPy/SciPy, never imports jax, draws
nothing (``scaling.report`` draws, ``scaling fit`` prints).

Modules, after Hoffmann et al. 2022 ("Chinchilla") and Kaplan et al. 2020:

* ``compute``: L(C) = E + A·C^(−α) through the lowest loss per compute;
* ``envelope``: approach 1, the lowest loss over training runs at each compute → N_opt(C);
* ``isoflop``: approach 2, parabolas of loss in ln N (ln D) per compute budget → N_opt ∝ C^a,
  D_opt ∝ C^b;
* ``parametric``: approach 3, L(N, D) = E + A/N^α + B/D^β (or Kaplan's form) by Huber loss on
  log-loss with L-BFGS from a grid, and the compute-optimal allocation of a budget;
* ``bootstrap``: percentile intervals from refits on resampled runs;
* ``study``: a record's runs → fit points grouped by parametrization and architecture, every
  approach per group, held-out extrapolation.
"""
