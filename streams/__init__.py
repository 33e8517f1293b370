"""The streaming side of FundFlow: settings, decoding at the edge, Redis state
store, the Faust worker, and the command line. Everything with I/O lives here.
"""

__version__ = "0.1.0"
