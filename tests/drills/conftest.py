"""Fixtures the drills borrow: the backup drill trades through the finance tests' books (three
locations, a catalogue, stock, a finance key), so that its data is made the way those tests make it."""

from tests.services.finance.conftest import books  # noqa: F401  (a fixture, re-exported for pytest)
