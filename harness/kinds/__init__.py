"""Problem kinds: one module each, registered here (see ``harness.model.ProblemKind``).

``expectation``  d/dtheta E_q[f(x)]: a distribution family and a cost (the default kind)
``elbo``         d/dlambda ELBO: a variational family and a target log density

Adding a kind is one module with a ``KIND`` record and one line here; config, runner,
results and report pick it up.
"""

from . import elbo, expectation

KINDS = {
    expectation.KIND.name: expectation.KIND,
    elbo.KIND.name: elbo.KIND,
}
