"""What banks' systems emit, turned into FundFlow's TransactionEvents.

The input side, as ``alerts/`` is the output side: ISO 20022 statements and
notifications (camt.053 / camt.054), and the change streams of a core system's
tables (Debezium envelopes, Canal flat messages). Each adapter maps what it can,
dead-letters what it cannot with a reason, and never stops on one bad record.
"""
