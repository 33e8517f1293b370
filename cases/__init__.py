"""The analysts' case desk: cases opened from findings, worked by people, judged by outcome.

It stands beside ``alerts/`` (delivery), not on the worker path: no worker module
imports it. The HTTP layer (``streams.api.cases``) is its only face to people.

* ``model.py``: the case rules, pure (no Redis, no I/O, no clock): what a case is, who
  may do what to it in which state (``decide``), and why a request is refused
  (``Refused`` with a ``Reason``; the HTTP layer picks the status);
* ``store.py``: the cases in Redis (``CaseStore``): the intake from the findings feed,
  the reads, and the atomic apply of what ``decide`` answered;
* ``lua/``: the store's Lua scripts, one file each (their contracts are in ``store.py``).
"""
