"""q(x; mu, sigma) = N(mu, sigma^2), written x = mu + sigma * eps with eps ~ N(0, 1).

Score functions (used by the score-function estimator):
    d/dmu    log q = eps / sigma
    d/dsigma log q = (eps^2 - 1) / sigma
Pathwise derivatives (used by the pathwise estimator):
    dx/dmu = 1,  dx/dsigma = eps
"""

from ..base import Distribution

DISTRIBUTION = Distribution(
    name="normal",
    params=("mu", "sigma"),
    components=("mu", "sigma"),
    positive=("sigma",),
    description="N(mu, sigma^2), reparameterised as mu + sigma * eps",
)
