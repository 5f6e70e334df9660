"""Bayesian logistic regression on the Wisconsin diagnostic breast cancer data.

log g(w) = sum_n [y_n x_n.w - log(1 + exp(x_n.w))] + log N(w; 0, I),  D = 31:
569 examples x 30 features, each standardised to mean 0 and (population) sd 1, plus a
bias column of ones as the last column (as in Mohamed et al. 2020, Sec. 8.3).  y = 1 is
benign, 0 malignant (the file's coding).

Data: ``harness/vi/data/breast_cancer.csv``, the copy shipped with scikit-learn 1.9.1
(``sklearn/datasets/data/breast_cancer.csv``, BSD-3-Clause, (c) the scikit-learn
developers), itself the UCI ML "Breast Cancer Wisconsin (Diagnostic)" data set (Wolberg,
Street, Mangasarian; UCI Machine Learning Repository, CC BY 4.0,
https://doi.org/10.24432/C5DW2B).  First line: n, features, class names; then 30
features and the class per row.

``batch: B`` (optional, 0 or absent = full data) evaluates the likelihood on B examples
drawn uniformly with replacement per Monte Carlo sample (their own Philox stream, see
``harness.vi.kernels``), scaled by n / B: an unbiased estimate of the full-data log g and
gradient.

Exact references (``harness.vi.targets.logistic_exact``, plain NumPy/SciPy, apart from the
kernel): under q = N(mu, C C^T) each a_n = (2 y_n - 1) x_n . z is 1-D Gaussian, so the ELBO
and its gradient (diag: mu, log_sigma; full: mu, L) are sums of 1-D integrals per example
(Gauss-Hermite, 200 nodes, where sd(a_n) <= 2; closed-form asymptote plus Gauss-Legendre
where wider), with the prior and entropy in closed form.  ``exact_elbo`` and
``exact_grad`` are the full-data values also with ``batch`` (the minibatch target is
unbiased for the full-data one); ``optimum`` is the L-BFGS maximiser of the exact ELBO per
family (cached; ELBO* = -67.4634 diag, -55.4651 full), so traces carry ``dist_opt``.
No per-sample variance is exact (they need 2-D integrals over pairs of examples):
``exact_var`` is NaN, source ``none``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import codes
from . import Target, TargetData, logistic_exact

DATA = Path(__file__).resolve().parent.parent / "data" / "breast_cancer.csv"
N_DATA, N_FEATURES = 569, 30
DIM = N_FEATURES + 1


@lru_cache(maxsize=1)
def load() -> tuple[np.ndarray, np.ndarray]:
    """(X with bias column, y): X is (569, 31) standardised, y float in {0, 1}."""
    raw = np.loadtxt(DATA, delimiter=",", skiprows=1)
    feats, y = raw[:, :N_FEATURES], raw[:, N_FEATURES]
    feats = (feats - feats.mean(axis=0)) / feats.std(axis=0)
    X = np.hstack([feats, np.ones((raw.shape[0], 1))])
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def build(params: dict, dim=None) -> TargetData:
    X, y = load()
    batch = int(params.get("batch", 0) or 0)
    # writable copies: a read-only array is another numba type (another compilation)
    return TargetData("logistic_regression", codes.T_LOGISTIC, DIM, np.array(y, order="C"),
                      np.array(X, order="C"), np.array([batch], np.int64),
                      exact_elbo=logistic_exact.exact_elbo,
                      exact_grad=logistic_exact.exact_grad,
                      optimum=logistic_exact.optimum,
                      info={"batch": batch, "n_data": N_DATA})


TARGET = Target("logistic_regression", codes.T_LOGISTIC, ("batch",), build, fixed_dim=DIM,
                description="Bayesian logistic regression, breast cancer data (569 x 31)",
                has_optimum=True)
