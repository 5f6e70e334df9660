"""Shared test set-up.

Generated kernels go to a fresh directory per test session, so every run compiles from the
current sources (and the cache tests see a cold cache first).  A developer who wants faster
reruns can set HARNESS_KERNEL_DIR themselves.
"""

import os
import tempfile

os.environ.setdefault("HARNESS_KERNEL_DIR", tempfile.mkdtemp(prefix="harness-test-kernels-"))
