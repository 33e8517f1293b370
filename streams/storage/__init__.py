"""Where a customer's state lives in Redis, and how it is read back.

``keys`` names every Redis key; ``codec`` turns a state into its stored blob and back;
``changelog`` holds the records between full states and replays them; ``store`` is the
Lua compare-and-set commit and the loads; ``snapshot`` turns stored states into the rows
of ``metrics.md`` for readers (the CLI, the API, the backtest).
"""
