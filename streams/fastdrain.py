"""Faust hands every record it fetched to the streams through one call per record:

    await self.wait_first(callback(message), self.suspend_flow.wait())

(``faust.transport.consumer.Consumer._drain_messages``), so that a rebalance can interrupt
a delivery blocked on a full stream buffer. ``mode``'s ``Service.wait_first`` makes that
four tasks per record (the delivery, the flow flag, the service's stopped and crashed
flags), waits for the first, and cancels three. A delivery almost never blocks: the
buffer has room, the callback finishes without suspending, and the tasks are pure cost
(a profile of a worker at 2,200 events/s: 13% of its main thread).

``install()`` gives Faust's consumer a ``wait_first`` that, when no flag is set, runs the
delivery inline; if it finishes without suspending, that is the answer ``wait_first``
would have given (the delivery won, nothing else was set). If it suspends, the rest of it
goes to the original ``wait_first`` unchanged, so a rebalance interrupts it as before.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

_INSTALLED = "__fundflow_fast__"


class _Resumed:
    """The rest of a coroutine that already ran to its first suspension (``yielded``):
    awaiting this yields that point to the event loop again and drives the coroutine on."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def install() -> None:
    """Give Faust's consumer the inline ``wait_first`` (once per process)."""
    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    original = Consumer.wait_first
    if getattr(original, _INSTALLED, False):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (
            len(coros) == 2
            and isinstance(coros[0], Coroutine)
            and isinstance(coros[1], Coroutine)
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            delivery, flag = coros
            try:
                yielded = delivery.send(None)
            except StopIteration as done:
                flag.close()
                return WaitResults([delivery], [done.value], False)
            except BaseException:
                flag.close()
                raise
            return await original(self, _Resumed(delivery, yielded), flag, timeout=timeout)
        return await original(self, *coros, timeout=timeout)

    setattr(wait_first, _INSTALLED, True)
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
