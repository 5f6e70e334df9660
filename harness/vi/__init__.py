"""Variational inference: ELBO gradients for location-scale q (issue 5).

``families`` (diag, full), ``targets`` (gaussian, logistic_regression, ripple, banana),
``estimators`` (reparam, reparam_sampled_entropy, stl, score_function), ``codes`` (what the
kernels dispatch on), ``kernels`` (numba, loaded through ``harness.kernel_cache``), ``cuda``
(the same kernels on the CUDA backend), ``references`` (exact references written apart from
the kernels), ``api`` (estimate / reference / optimize / trace), ``config`` / ``runner`` /
``report`` (grid files with ``problem: {kind: elbo}``).  See docs/architecture.md.
"""
