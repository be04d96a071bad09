"""Child processes that never outlive the `tracker` process that started them."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Linux children: when the parent dies, even by SIGKILL, the child
    gets SIGTERM instead of living on as an orphan that holds its port and the database."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
