"""Location-scale variational families q(z; lambda): z = mu + C eps, eps ~ N(0, I_d).

The d-dimensional counterpart of the 1-D ``harness.distributions.normal`` (x = mu + sigma eps
on the shared normal stream): a family fixes the parameterisation lambda of the location mu
and the scale C, the names of the gradient components, and four jitted functions the ELBO
kernels (``harness.vi.kernels``) call on every sample, one module per family:

``transform(mu, C, eps, z, v) -> log|det C|``
    the sampler: z = mu + C eps for the base draw eps (the seed's flat normal stream, see
    ``harness.vi.kernels``), and v = C^-T eps = -grad_z log q(z).
``inverse(mu, C, z, eps, v)``
    eps = C^-1 (z - mu) and v = C^-T eps: the base draw that gives z.
``score(C, eps, v, out)``
    out[:P] = grad_lambda log q(z; lambda) at fixed z = mu + C eps (v = C^-T eps).
``pathwise(C, eps, h, out)``
    out[:P] = h^T dz/dlambda, the reparameterisation gradient of any F(z) with grad_z F = h.
``add_entropy_gradient(C, out)``
    out[:P] += grad_lambda log|det C| (the gradient of the entropy of q).
``unpack_into(theta, mu, C)`` / ``project(theta, d, min_diag)``
    for optimisation: theta -> (mu, C), and keeping the scale valid after a step.

Scratch arrays are passed in (no allocation), so the same functions run in CUDA kernels.
Shapes: mu, eps, z, v, h (d,); C (d, d) (diag: only the diagonal is read); out (>= P,).

``FAMILIES``: name -> :class:`Family` (plain dict).  Both families have a standard normal
base; a Student-t base would be a new family module with its own log phi in the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A location-scale family: names, parameter vector layout, description."""

    name: str
    code: int                        # harness.vi.codes.F_*
    params: tuple[str, str]          # (location, scale) parameter names, also the grid keys
    base: str                        # the base density of eps
    description: str
    n_params: Callable[[int], int]   # d -> P, the number of gradient components
    components: Callable[[int], tuple[str, ...]]   # d -> component names, in theta order
    theta: Callable                  # (mu, C) -> theta[P]
    unpack: Callable                 # theta[P] -> (mu, C)

    @property
    def scale_key(self) -> str:
        """The grid key of the scale parameter under ``q``."""
        return self.params[1]


from . import diag, full  # noqa: E402  (the modules build their records with Family)

FAMILIES = {f.FAMILY.name: f.FAMILY for f in (diag, full)}
