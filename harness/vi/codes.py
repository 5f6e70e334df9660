"""The small integer codes the ELBO kernels (``harness.vi.kernels``) dispatch on.

Plain constants, so the registries (targets, families, estimators) can name a kernel branch
without importing any jitted code.  numba reads module-level integers as compile-time
constants; this file is one of the kernel module's dependencies (``harness.kernel_cache``),
so editing it gives a new kernel.
"""

# targets log g (harness.vi.targets)
T_GAUSSIAN = 0
T_LOGISTIC = 1
T_RIPPLE = 2
T_BANANA = 3
T_USER = 4                   # a user-written log density (harness.vi.targets.user)

# families q(z; lambda) (harness.vi.families)
F_DIAG = 0
F_FULL = 1

# estimators (harness.vi.estimators): the registry maps names and options to these
E_REPARAM = 0
E_REPARAM_SAMPLED_ENTROPY = 1
E_STL = 2
E_SCORE = 3                  # score_function[baseline=none]
E_SCORE_MEAN = 4             # score_function[baseline=mean]: leave-one-out, moments
E_WRONG_NO_ENTROPY = 5       # deliberately wrong (entropy gradient dropped): tests only
E_SCORE_OPTIMAL = 6          # score_function[baseline=optimal]: b^_j from the independent copy
E_SCORE_EXACT_OPTIMAL = 7    # score_function[baseline=exact_optimal]: exact b*_j per cell
E_WRONG_BASELINE_INDEX = 8   # deliberately wrong (b*_{j+1} used for component j): tests only
