"""Variational inference: ELBO gradients for location-scale q (issue 5).

``families`` (diag, full), ``targets`` (gaussian, logistic_regression, ripple, banana),
``estimators`` (reparam, reparam_sampled_entropy, stl, score_function), ``kernels`` (numba),
``api`` (estimate / reference / optimize / trace), ``config`` / ``runner`` / ``report`` (grid
files with ``problem: {kind: elbo}``).  See docs/architecture.md.
"""
