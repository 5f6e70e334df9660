"""Copy an inlined function's IR once per call site, not once per block (compile time).

Every kernel inlines its sample body with numba's ``inline="always"``: numba's
``InlineWorker.inline_ir`` then deep-copies the callee's IR twice per call site, one
``copy.deepcopy`` per block.  Each block's copy also copies the function's whole ``Scope``
(every ``ir.Var`` refers to it), so a copy costs blocks x variables, and a callee that has
itself inlined Philox4x32-10 (10 rounds) has many of both: in the measure-valued shared-draw
kernel (Philox twice, a log, a square root) the inlining pass took 1.1 of the kernel's 2.1 s
of compile CPU (numba 0.68.1, ``pipeline_times``).  The same issue is known upstream
(numba/numba#8989, numba/numba#9204; numba-cuda#688 and its pull request #689, open).

:func:`apply` re-defines ``inline_ir`` from numba's own source with one change: all blocks
are copied by one ``copy.deepcopy`` call, so they share one copied scope, exactly as the
original blocks share one scope.  The IR is otherwise the same, so the machine code, numba's
cache entries and every number are the same (``tests/test_kernel.py``'s helper-process test
compares a process with numba's inliner and one with this one bitwise).  If numba's source
does not contain the exact lines replaced (another numba version), nothing changes.
``HARNESS_NUMBA_INLINE=numba`` keeps numba's own function.
"""

from __future__ import annotations

import inspect
import os
import textwrap

ENV = "HARNESS_NUMBA_INLINE"

_PER_BLOCK = """\
    kernel_copy.blocks = {}
    for block_label, block in the_ir.blocks.items():
        new_block = copy.deepcopy(the_ir.blocks[block_label])
        kernel_copy.blocks[block_label] = new_block
"""
_ALL_AT_ONCE = """\
    kernel_copy.blocks = copy.deepcopy(the_ir.blocks)  # one memo: one copied scope
"""
_state = {"result": None}


def apply() -> str:
    """Install the one-copy ``inline_ir`` (once per process).  Returns ``"patched"``,
    ``"off"`` (``$HARNESS_NUMBA_INLINE`` is ``numba``) or ``"unrecognised"`` (numba's source
    differs from the version this was written for: left alone)."""
    if _state["result"] is not None:
        return _state["result"]
    if os.environ.get(ENV, "").strip().lower() == "numba":
        _state["result"] = "off"
        return "off"
    from numba.core import inline_closurecall

    original = inline_closurecall.InlineWorker.inline_ir
    try:
        source = textwrap.dedent(inspect.getsource(original))
    except (OSError, TypeError):
        source = ""
    old = textwrap.indent(_PER_BLOCK, " " * 4)
    if source.count(old) != 1:
        _state["result"] = "unrecognised"
        return "unrecognised"
    namespace: dict = {}
    code = compile(source.replace(old, textwrap.indent(_ALL_AT_ONCE, " " * 4)),
                   inline_closurecall.__file__, "exec")
    exec(code, vars(inline_closurecall), namespace)  # numba's module globals, as before
    patched = namespace["inline_ir"]
    patched.__qualname__ = original.__qualname__
    patched.__doc__ = original.__doc__
    inline_closurecall.InlineWorker.inline_ir = patched
    _state["result"] = "patched"
    return "patched"
