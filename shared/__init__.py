"""Plumbing every omnistock service shares: settings, database, migrations, logging, HTTP, auth.

Business rules never live here; each service keeps its own in services/<name>/domain.py.
"""
