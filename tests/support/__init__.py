"""What the tests share: helpers, fakes, generators and reference implementations.

Nothing here is a test module (no ``test_*.py``): a test module imports from here or gets a
fixture from its layer's ``conftest.py``, never from another test module
(``tests/unit/test_test_layout.py``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
