"""Stopping on SIGINT / SIGTERM, the same way in every long-running FundFlow process.

An orchestrator (Kubernetes, compose, systemd) sends SIGTERM and waits a grace period;
a person presses Ctrl-C. Either way the process must go, promptly and with status 0,
even when the servers it talks to are gone: a consumer retrying a group coordinator
that no longer answers, or a batch retrying a Redis that is down, must not hold it.

* ``install(name)`` (the CLI, for ``worker``, ``api``, ``alerts webhook``, ``stack``,
  ``demo``, ``replay``): SIGINT and SIGTERM both act as Ctrl-C does, a
  ``KeyboardInterrupt`` in the main thread, so each command's own orderly shutdown runs
  (``asyncio.run`` cancels its tasks and their ``finally`` blocks close clients, aiohttp
  closes its site, ``with Stack(...)`` stops its servers).
* The Faust worker's own signal handlers (``mode.Worker``) call ``begin`` before they
  start Faust's shutdown (``streams.patches.StoppingWorker``).
* ``begin`` prints the one line ("fundflow worker: stopping on SIGTERM") and arms a
  watchdog: a shutdown still running ``GRACE_SECONDS`` later is cut short, and the
  process exits with status 0 anyway (uncommitted offsets are redelivered to the next
  owner, which is a no-op for state: txn_ids). A second signal exits at once.
  Children die with the process: the embedded servers and the demo's workers are started
  with a parent-death signal (``streams.local.servers``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

# Under the 10 s an orchestrator is promised, with room for a loaded machine. Faust's orderly
# stop takes 1-2 s; it never ends while a batch waits for Redis: the consumer waits for the
# batch's acks before it commits (stream_wait_empty), and acking unprocessed records would
# lose them, so the watchdog's exit (offsets uncommitted, redelivered) is the right ending.
GRACE_SECONDS = 7.0

_lock = threading.Lock()
_name = "fundflow"
_since: float | None = None


def install(name: str) -> None:
    """From now on SIGINT and SIGTERM stop this process (main thread only)."""
    global _name
    _name = name
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def requested() -> bool:
    """True once a stop signal arrived (the CLI then exits 0, not 130)."""
    return _since is not None


def begin(signum: int) -> None:
    """A stop signal: the first prints one line and arms the watchdog; a later one exits now."""
    global _since
    with _lock:
        first = _since is None
        if first:
            _since = time.monotonic()
    if not first:
        _exit(f"{_name}: second {_signame(signum)}, exiting now")
        return
    print(f"{_name}: stopping on {_signame(signum)} (at most {GRACE_SECONDS:.0f} s)", file=sys.stderr, flush=True)
    watchdog = threading.Timer(GRACE_SECONDS, _exit, [f"{_name}: still stopping after {GRACE_SECONDS:.0f} s; exiting"])
    watchdog.daemon = True
    watchdog.start()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    begin(signum)
    raise KeyboardInterrupt


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _exit(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(0)
