"""The analysts' case desk: cases opened from findings, worked by people, judged by outcome.

It stands beside ``alerts/`` (delivery), not on the worker path: no worker module
imports it. The HTTP layer (``streams.api.cases``) is its only face to people.
"""
