"""The one base of every tracker task: database retries, bad input, the task's time
limit, and enqueueing after the commit, declared once instead of on every task.

A task opts in with ``@shared_task(base=TrackerTask, name=...)``; Celery reads the retry
options below from the task class, and a decorator option overrides any of them for one
task (``tracker.request_refill`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from celery import Task
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from tracker.core.time_limits import Deadline

W = TypeVar("W")


class InvalidTaskInput(ValueError):
    """The task was called with arguments it cannot use. Not retried."""


# What a shop can get wrong in a task it sends by name: an unknown provider or order
# (``LookupError``), a malformed ID or service (``ValueError``).
SHOP_INPUT_ERRORS: tuple[type[Exception], ...] = (LookupError, ValueError)

# The options of a task a shop sends by name. Its message is the only copy of what the shop
# handed over (order IDs, a drop): while the database is unreachable it is retried, every
# ``retry_backoff_max`` seconds at the most, until the database is back, never dropped
# after ``max_retries`` tries as the tracker's own tasks are (their work comes back by
# itself: the next tick, a lease). A value the database refuses is still not retried.
SHOP_TASK_OPTIONS: dict[str, Any] = {"bad_input": SHOP_INPUT_ERRORS, "max_retries": None}


# Celery ships no type information: its Task is Any to mypy.
class TrackerTask(Task):  # type: ignore[misc]
    # Database hiccups (a killed connection, a failover) are retried: every task is one
    # transaction, so a retry starts from a clean slate and nothing is half-written.
    autoretry_for: ClassVar[tuple[type[BaseException], ...]] = (OperationalError, DBAPIError)
    # A value the database refuses fails the same way every time. (A unique-constraint
    # race is retried: the retry finds the other writer's row.)
    dont_autoretry_for: ClassVar[tuple[type[BaseException], ...]] = (DataError,)
    retry_backoff: ClassVar[int] = 1
    retry_backoff_max: ClassVar[int] = 30
    retry_jitter: ClassVar[bool] = True
    max_retries = 5

    # Exceptions that mean the caller sent arguments the task cannot use: raised as
    # ``InvalidTaskInput`` with the same message, so the log names the mistake and the
    # task is not retried. None by default: most tasks are sent by the tracker itself,
    # where such an error is a defect to see in full.
    bad_input: ClassVar[tuple[type[Exception], ...]] = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        limit = self.soft_time_limit or self.app.conf.task_soft_time_limit
        started = _deadline.set(Deadline.after(float(limit)) if limit else None)
        try:
            return super().__call__(*args, **kwargs)
        except InvalidTaskInput:
            raise
        except self.bad_input as error:
            # ``from None``: the caller's mistake needs no traceback into the use case.
            raise InvalidTaskInput(str(error)) from None
        finally:
            _deadline.reset(started)


_deadline: ContextVar[Deadline | None] = ContextVar("tracker_task_deadline", default=None)


def task_deadline() -> Deadline | None:
    """The running task's soft time limit, counted from its start on the monotonic clock
    (the pool's timer starts a moment earlier still: callers keep a margin); None
    outside a task. A task that loops starts no unit of work that could outlast it."""
    return _deadline.get()


def enqueue_committed(committed: Iterable[W], send: Callable[[W], object]) -> int:
    """Sends one message per piece of work, in order, and says how many.

    Only for work whose claims are committed: a task sent earlier could start before the
    commit and find nothing claimed, or run on a claim that is then rolled back. Use cases
    commit and then return (or yield, a round at a time) what they claimed; the task hands
    that here."""
    sent = 0
    for piece in committed:
        send(piece)
        sent += 1
    return sent
