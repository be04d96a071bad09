"""tracker: keeps an SMM reseller shop's orders in sync with its upstream API v2 providers.

`celery -A tracker ...` finds the Celery app here as ``tracker.app``. It is loaded lazily
so that the CLI and the pure rules in ``tracker.core`` do not pay for importing Celery.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "app", "celery"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tracker.worker.app import app

        return app
    raise AttributeError(f"module 'tracker' has no attribute {name!r}")
