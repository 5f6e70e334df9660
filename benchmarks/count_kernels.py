"""How many kernels the conformance cases of tests/test_estimators.py compile.

    HARNESS_KERNEL_DIR=$(mktemp -d) python benchmarks/count_kernels.py

Loads (writes, without compiling) the kernels of every (family, cost) cell type that
``tests/test_estimators.py::cases`` runs (every variant the registry allows, every
component) into an empty ``HARNESS_KERNEL_DIR`` and counts the generated modules by kind:
draw kernels (per family and cost), shared-draw kernels, term kernels and, among those,
the cost-free ones (one for every cost).  Each is one numba compile in each Python of CI.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conformance import conformance_labels, spec  # noqa: E402

from harness import registry  # noqa: E402
from harness.backends import cpu  # noqa: E402


def main():
    directory = cpu.kernel_dir()
    if any(directory.glob("*.py")):
        sys.exit(f"{directory} is not empty: set HARNESS_KERNEL_DIR to an empty directory")
    for family in registry.FAMILIES:
        for cost in registry.COSTS:
            for label in conformance_labels(cost, family):   # the components it supports
                components = registry.supported_components(label, family,
                                                           registry.FAMILIES[family].params)
                cpu.load_kernel(family, spec(cost), [label], components)
    texts = [path.read_text() for path in directory.glob("*.py")]
    kinds = {"draw": "def draw_block", "shared draws": "def draw_shared",
             "term": "def accumulate", "of them cost-free": "cost: any"}
    counts = {kind: sum(marker in text for text in texts) for kind, marker in kinds.items()}
    print(f"{len(texts)} kernels in {os.fspath(directory)}: "
          + ", ".join(f"{kind} {n}" for kind, n in counts.items()))


if __name__ == "__main__":
    main()
