"""Score-function (REINFORCE, likelihood-ratio) estimator.

Estimand:  d/dtheta E_q[f(x)] for q = N(mu, sigma^2), theta in {mu, sigma}.
Formula:   g = f(x) * d/dtheta log q(x; theta), the N-sample estimate is mean(g) over
           x_i = mu + sigma * eps_i, eps_i the shared normal stream 0 of the seed:
             mu:    g = f(x) * eps / sigma
             sigma: g = f(x) * (eps^2 - 1) / sigma
Requires:  f evaluable pointwise (no derivative); 1 cost evaluation per sample.
Reference: Williams (1992); Mohamed et al., JMLR 2020, Section 4.
"""

from numba import njit

from ..base import Estimator


@njit
def per_sample(component, cost, k, mu, sigma, eps, f, df, key0, key1, index):
    if component == 0:
        return f * eps / sigma
    return f * (eps * eps - 1.0) / sigma


ESTIMATOR = Estimator(
    name="score_function",
    per_sample=per_sample,
    needs_derivative=False,
    evals_per_sample=1,
    description="f(x) * grad log q(x): unbiased for any f, high variance",
)
