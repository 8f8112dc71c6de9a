"""Who may touch what in the database: one role per service, and the grants that bound it.

The owner (DATABASE_URL: the embedded superuser, or the operator's admin account) runs migrations and
then `apply_grants`; each service connects as its own role (OMNISTOCK_<SERVICE>_DATABASE_URL), which
owns nothing and may change only its own schema's rows:

- every role reads `core.api_keys` (authentication) and writes the outbox and idempotency records;
  no service role may create, revoke or edit an API key row; it records `last_used_at` and calls
  the two functions that issue and revoke keys for a caller whose admin key the database checks;
- `writes`: SELECT, INSERT, UPDATE, DELETE on the schema's tables; `appends`: SELECT and INSERT only
  (the ledger: no UPDATE or DELETE for its role, beside the trigger guard); `reads`: SELECT only
  (`read_tables`: on the tables named);
- `members_of`: a service that runs another one's domain code in its own transaction takes that
  role's rights (e-commerce places shop orders through the orders domain; finance appends to the
  ledger through the embedded backend, whose pool also SET ROLEs to omnistock_ledger);
- PUBLISHED functions are the only way into another schema's rows: owned by their schema's role,
  SECURITY DEFINER with a fixed search_path, EXECUTE for the roles named and nobody else.

No role is the owner of a table, so none can ALTER, DROP or disable a trigger. Role and schema names
come from the fixed tables below, never from input; names of login users taken from URLs are quoted
by `quote_ident`. Grants are re-applied after every migration run that changes what they would be
(their statements' digest is recorded), so a new table gets its grants without a new rule here.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import asyncpg

from shared.db import Connection
from shared.embedded_db import scram_verifier
from shared.logging import get_logger
from shared.migrations import MIGRATION_LOCK_KEY, MigrationSet, apply_migrations
from shared.settings import Settings

SERVICES: tuple[str, ...] = ("inventory", "orders", "ecommerce", "finance", "ledger", "console")
ROLE_OF: dict[str, str] = {service: f"omnistock_{service}" for service in SERVICES}


@dataclass(frozen=True)
class Access:
    writes: tuple[str, ...] = ()
    appends: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    read_tables: tuple[tuple[str, str], ...] = ()  # (schema, table): SELECT on just these
    members_of: tuple[str, ...] = ()
    read_only: tuple[tuple[str, str], ...] = ()  # (schema, table) of a `writes` schema: SELECT only


ACCESS: dict[str, Access] = {
    "inventory": Access(writes=("inventory",)),
    "orders": Access(writes=("orders",), reads=("inventory",)),
    "ecommerce": Access(writes=("ecommerce",), reads=("inventory",), members_of=("orders",)),
    "finance": Access(writes=("finance",), reads=("orders", "inventory"), members_of=("ledger",)),
    # The revenue audit compares the ledger with finance's revenue report, which sums orders.sales.
    "ledger": Access(appends=("ledger",), read_tables=(("orders", "sales"),)),
    # People are the owner's to create and disable (`omnistock users`); the console signs them in.
    "console": Access(writes=("console",), read_only=(("console", "users"),)),
}

# (schema, function name) -> the services that may call it. Every overload of the name is covered.
PUBLISHED: dict[tuple[str, str], tuple[str, ...]] = {
    ("inventory", "lock_levels"): ("orders",),
    ("inventory", "apply_movement"): ("orders",),
    ("inventory", "reserve_many"): ("orders",),
    ("inventory", "reserve_groups"): ("orders",),
}

MANAGED_SCHEMAS: tuple[str, ...] = ("core", *SERVICES)
GRANTS_MARK = ("omnistock_grants", "plan")  # its row in public.omnistock_migrations: digest of the last plan
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


def quote_ident(name: str) -> str:
    """A SQL identifier, double-quoted (utility statements such as GRANT take no parameters)."""
    if not name or "\x00" in name:
        raise ValueError("an identifier must be non-empty and free of NUL")
    return '"' + name.replace('"', '""') + '"'


def _ident(name: str) -> str:
    """Quote a name from the fixed tables above; anything else here is a bug, not input."""
    if not _NAME.match(name):
        raise ValueError(f"not an omnistock role or schema name: {name!r}")
    return quote_ident(name)


def service_dsn(settings: Settings, service: str) -> str:
    """The URL `service` connects with: its own role's, or (external server, none configured) the owner's."""
    own = getattr(settings, f"{service}_database_url", None)  # None too for apps built only in tests
    if own:
        return str(own)
    if not settings.database_url:
        raise ValueError(f"no database URL for {service}: set OMNISTOCK_{service.upper()}_DATABASE_URL")
    if service in ROLE_OF:
        # A fresh logger, so the level configured now applies (a cached one keeps the first level it saw).
        get_logger("omnistock.roles").warning(
            "service connects as the database owner, not as its own role: every schema is open to it;"
            f" set OMNISTOCK_{service.upper()}_DATABASE_URL (see README, Database security)",
            service=service, role=ROLE_OF[service])
    return settings.database_url


def configured_logins(settings: Settings) -> dict[str, str]:
    """Service -> the URL configured for it, for `ensure_logins`."""
    return {s: url for s in SERVICES if (url := getattr(settings, f"{s}_database_url"))}


async def ensure_group_roles(conn: Connection) -> None:
    """Each service's role (NOLOGIN until `ensure_logins` gives it a password) and its memberships.
    Roles are cluster-wide: create only what is missing, so databases of one cluster do not race."""
    existing = {r["rolname"] for r in await conn.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(ROLE_OF.values()))}
    for role in ROLE_OF.values():
        if role not in existing:
            # Another database of this cluster may create it a moment before us.
            with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE ROLE {_ident(role)} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                                   " NOREPLICATION NOBYPASSRLS")
    for service, access in ACCESS.items():
        for other in access.members_of:
            if not await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", ROLE_OF[service], ROLE_OF[other]):
                await conn.execute(f"GRANT {_ident(ROLE_OF[other])} TO {_ident(ROLE_OF[service])}")


async def ensure_logins(conn: Connection, urls: Mapping[str, str]) -> None:
    """Let each service's URL log in: its user gets LOGIN and the URL's password (as a SCRAM verifier,
    never in clear), and, when it is not the service's role itself, membership in that role. Under the
    migration lock: two ALTER ROLEs of one role at once fail ("tuple concurrently updated")."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await _ensure_logins(conn, urls)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _ensure_logins(conn: Connection, urls: Mapping[str, str]) -> None:
    await ensure_group_roles(conn)
    owner = await conn.fetchval("SELECT current_user")
    for service, url in urls.items():
        parts = urlsplit(url)
        user = unquote(parts.username or "")
        if not user or user == owner:
            continue  # the owner's own URL (the fallback): nothing to grant
        password = unquote(parts.password) if parts.password is not None else None
        role = ROLE_OF[service]
        if user != role and not await conn.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", user):
            await conn.execute(f"CREATE ROLE {quote_ident(user)} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
        secret = f" PASSWORD '{scram_verifier(password)}'" if password is not None else ""
        await conn.execute(f"ALTER ROLE {quote_ident(user)} LOGIN{secret}")
        if user != role and not await conn.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", user, role):
            await conn.execute(f"GRANT {_ident(role)} TO {quote_ident(user)}")


async def _grant_plan(conn: Connection) -> list[str]:
    """Every statement that makes this database's privileges what the tables above say, in order."""
    present = {r["nspname"] for r in await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", list(MANAGED_SCHEMAS))}
    roles = ", ".join(_ident(r) for r in ROLE_OF.values())
    plan = ["REVOKE CREATE ON SCHEMA public FROM PUBLIC"]
    # Start from nothing, so a privilege dropped from the tables above is taken away too.
    for schema in sorted(present):
        s = _ident(schema)
        plan += [f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC, {roles}",
                 f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC, {roles}",
                 f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM PUBLIC, {roles}"]
        if schema == "core":  # the key functions; services' own functions are PUBLISHED's business
            plan.append(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA core FROM {roles}")
    plan.append(f"GRANT SELECT ON public.omnistock_migrations TO {roles}")  # a start-up without the owner checks it
    if "core" in present:
        plan += [f"GRANT USAGE ON SCHEMA core TO {roles}",
                 f"GRANT SELECT ON core.api_keys TO {roles}",
                 *await _key_lifecycle_plan(conn, roles),
                 f"GRANT SELECT, INSERT ON core.events TO {roles}",
                 # E-commerce holds the outbox's only durable cursors, so it prunes what they have passed.
                 f"GRANT DELETE ON core.events TO {_ident(ROLE_OF['ecommerce'])}",
                 f"GRANT SELECT, INSERT, UPDATE, DELETE ON core.idempotency_keys TO {roles}",
                 f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA core TO {roles}"]
        if await conn.fetchval("SELECT to_regclass('core.outbox_horizon') IS NOT NULL"):
            plan += [f"GRANT SELECT ON core.outbox_horizon TO {roles}",  # streams check resumes against it
                     f"GRANT UPDATE ON core.outbox_horizon TO {_ident(ROLE_OF['ecommerce'])}"]
    for service, access in ACCESS.items():
        r = _ident(ROLE_OF[service])
        for schema in (*access.writes, *access.appends, *access.reads):
            if schema in present:
                plan.append(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {r}")
        for schema in access.writes:
            if schema in present:
                plan += [f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {_ident(schema)} TO {r}",
                         f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {r}"]
        for schema in access.appends:
            if schema in present:
                plan += [f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {_ident(schema)} TO {r}",
                         f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {r}"]
        for schema in access.reads:
            if schema in present:
                plan.append(f"GRANT SELECT ON ALL TABLES IN SCHEMA {_ident(schema)} TO {r}")
        for schema, table in access.read_only:
            if schema in present and await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"):
                plan.append(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {_ident(schema)}.{_ident(table)} FROM {r}")
        for schema, table in access.read_tables:
            if schema in present and await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"):
                plan += [f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {r}",
                         f"GRANT SELECT ON {_ident(schema)}.{_ident(table)} TO {r}"]
    plan += await _published_function_plan(conn, present)
    for fn in CONSOLE_FUNCTIONS:
        if await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", fn):
            plan.append(f"GRANT EXECUTE ON FUNCTION {fn} TO {_ident(ROLE_OF['console'])}")
    return plan


# The console's only way to a key: one for an enabled user, with that user's role (its migration 0001).
CONSOLE_FUNCTIONS = ("console.issue_person_key(bigint, bytea, timestamptz)", "console.revoke_person_key(bigint)")

# Keys are issued and revoked over HTTP only through these, which check the caller's admin key in the
# database (shared/migrations/0003); last_used_at is the one column a service writes (in batches).
KEY_FUNCTIONS = ("core.admin_issue_api_key(text, text, text, text, timestamptz, bytea)",
                 "core.admin_revoke_api_key(text, bigint)")


async def _key_lifecycle_plan(conn: Connection, roles: str) -> list[str]:
    if not await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", KEY_FUNCTIONS[0]):
        return []  # a database before the key lifecycle migration
    return [f"GRANT UPDATE (last_used_at) ON core.api_keys TO {roles}",
            *(f"GRANT EXECUTE ON FUNCTION {fn} TO {roles}" for fn in KEY_FUNCTIONS)]


async def _published_function_plan(conn: Connection, present: set[str]) -> list[str]:
    plan: list[str] = []
    for (schema, name), callers in PUBLISHED.items():
        if schema not in present:
            continue
        # regprocedure's text is the signature, already quoted by the server.
        for row in await conn.fetch(
            "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proname = $2 ORDER BY 1", schema, name,
        ):
            fn = row["signature"]
            grantees = ", ".join(_ident(ROLE_OF[s]) for s in (schema, *callers))
            # The owner's rights, not the caller's, and no caller-chosen search_path to resolve names in
            # (the bodies name every object with its schema).
            plan += [f"ALTER FUNCTION {fn} OWNER TO {_ident(ROLE_OF[schema])}",
                     f"ALTER FUNCTION {fn} SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
                     f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC",
                     f"GRANT EXECUTE ON FUNCTION {fn} TO {grantees}"]
    return plan


async def apply_grants(conn: Connection, *, force: bool = False) -> bool:
    """Bring this database's privileges in line with the tables above, in one transaction; skipped when
    the plan is the one applied last (unless `force`). Returns whether it ran. Call under the
    migration lock (`prepare_database`): concurrent GRANTs on one object fail."""
    await ensure_group_roles(conn)
    plan = await _grant_plan(conn)
    digest = hashlib.sha256("\n".join(plan).encode()).hexdigest()
    recorded = await conn.fetchval(
        "SELECT checksum FROM public.omnistock_migrations WHERE schema_name = $1 AND version = $2", *GRANTS_MARK)
    if recorded == digest and not force:
        return False
    async with conn.transaction():
        for statement in plan:
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO public.omnistock_migrations (schema_name, version, checksum) VALUES ($1, $2, $3)"
            " ON CONFLICT (schema_name, version) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
            *GRANTS_MARK, digest)
    return True


async def prepare_database(conn: Connection, sets: Iterable[MigrationSet], *,
                           logins: Mapping[str, str] | None = None, bootstrap_admin_key: str | None = None,
                           force_grants: bool = False) -> list[str]:
    """What only the owner does, once per start: logins, pending migrations, grants, the bootstrap key."""
    from shared.auth import ensure_bootstrap_admin

    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)  # re-entrant: apply_migrations takes it too
    try:
        if logins:
            await ensure_logins(conn, logins)
        applied = await apply_migrations(conn, list(sets))
        await apply_grants(conn, force=force_grants or bool(applied))
        if bootstrap_admin_key is not None:
            await ensure_bootstrap_admin(conn, bootstrap_admin_key)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied


class MigrationsPending(RuntimeError):
    """A service started without the owner's URL against a database whose migrations are not all applied."""


async def require_migrated(conn: Connection, sets: Iterable[MigrationSet]) -> None:
    """A service that cannot migrate (it has only its role's URL) refuses to start on an older schema."""
    try:
        rows = await conn.fetch("SELECT schema_name, version FROM public.omnistock_migrations")
    except asyncpg.UndefinedTableError:
        rows = []
    done = {(r["schema_name"], r["version"]) for r in rows}
    missing = [f"{s.schema}/{p.name}" for s in sets for p in s.files() if (s.schema, p.name) not in done]
    if missing:
        raise MigrationsPending(f"{len(missing)} migrations not applied (first: {missing[0]}); run"
                                " `omnistock migrate` with the owner's DATABASE_URL first")
