"""A guard against a reference-counting defect of some PySide6 wheels on Python 3.11.

PySide6-Essentials 6.12.0 (abi3 wheels) releases one reference to `None` every time Python
calls a C++ method that returns void (`label.setText`, `painter.drawLine`, ...), as if `None`
were immortal, which it is only from Python 3.12 on. On 3.11 `None` starts with about 5,000
references, so a live window aborts the interpreter within seconds ("Fatal Python error:
none_dealloc"). 6.11.2 does not do this.

The guard measures instead of trusting a version number: it calls a void method a few times
and, only if `None` lost references, gives `None` a very large reference count once (as
3.12 does by design), which the leak cannot exhaust in any realistic run time.
"""

from __future__ import annotations

import ctypes
import sys

#: References given to None when the defect is present (2**40: decades of leaking at 1 MHz).
NONE_BALLAST = 1 << 40


def void_calls_leak_none() -> bool:
    """True when calling a void Qt method releases a reference to None."""
    from PySide6.QtCore import QPointF

    point = QPointF()
    before = sys.getrefcount(None)
    for _ in range(20):
        point.setX(1.0)
    return sys.getrefcount(None) < before - 10


def guard_none_refcount() -> bool:
    """Apply the guard where needed; True when it was applied."""
    if sys.version_info >= (3, 12) or not void_calls_leak_none():
        return False
    refcount = ctypes.c_ssize_t.from_address(id(None))  # ob_refcnt is PyObject's first field
    refcount.value += NONE_BALLAST
    return True


GUARDED = guard_none_refcount()
