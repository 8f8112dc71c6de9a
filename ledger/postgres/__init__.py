"""The embedded ledger backend: an RFC 9162 log in PostgreSQL schema `ledger` (the default backend)."""

from pathlib import Path

from shared.migrations import MigrationSet

MIGRATIONS = [MigrationSet("ledger", Path(__file__).parent / "migrations")]
LEDGER_ROLE = "omnistock_ledger"
