"""`/v1/keys` on every service (mounted by the app factory): admins list, create and revoke API keys.

A created key is in the 201's `key` and nowhere else: not stored, not logged. With an
`Idempotency-Key`, a retry gets the stored answer, which holds the key's record but `key: null`
(the idempotency table never holds a key): a client that lost the first answer revokes that id and
creates another.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StringConstraints, TypeAdapter, model_validator

from shared import keys
from shared.auth import bearer_key
from shared.db import transaction
from shared.errors import field_error
from shared.http.api import Api, Call, Reply, to_jsonable
from shared.http.models import RequestModel, ResponseModel
from shared.idempotency import run_once
from shared.paging import Cursor
from shared.text import FreeText

ADMIN = ("admin",)
KeyId = Annotated[int, Field(ge=1, le=2**63 - 1)]
Label = Annotated[FreeText, StringConstraints(min_length=1, max_length=200)]
Duration = Annotated[str, StringConstraints(min_length=2, max_length=40)]
RoleName = Literal["admin", "ops", "store", "shop", "finance", "auditor"]
Status = Literal["active", "revoked", "expired"]


class KeyIn(RequestModel):
    role: RoleName
    # Inventory's location id shape (services/inventory/schemas.py), so a store key can be bound to it.
    location_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] | None = None
    label: Label | None = None
    expires_at: AwareDatetime | None = None
    expires_in: Duration | None = None  # 30d, 12h, 1d12h, 90m, 2w, 3600s

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyIn:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("send expires_at or expires_in, not both")
        return self


class KeysQuery(RequestModel):
    role: RoleName | None = None
    status: Status | None = None
    cursor: Cursor | None = None  # a next_cursor, unchanged
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class KeyOut(ResponseModel):
    id: int
    role: str
    location_id: str | None
    label: str | None
    status: Status
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None  # written in batches: up to OMNISTOCK_AUTH_LAST_USED_FLUSH_S behind
    revoked_at: datetime | None
    created_by: int | None  # the admin key that created it; None: the database owner (CLI, bootstrap)
    revoked_by: int | None
    person: str | None  # the console user a sign-in's key stands for; None: a machine's key


class KeyCreated(KeyOut):
    key: str | None  # the API key, in this answer only; null in an idempotent replay


class KeyList(ResponseModel):
    items: list[KeyOut]
    next_cursor: str | None = None  # send back as ?cursor= for the next page; None on the last page


def _request(body: KeyIn) -> keys.KeyRequest:
    expires_at = body.expires_at
    if body.expires_in is not None:
        try:
            expires_at = keys.parse_expiry(body.expires_in, datetime.now(UTC))
        except ValueError as exc:
            raise field_error("expires_in", str(exc)) from None
    return keys.KeyRequest(body.role, body.location_id, body.label, expires_at)


def add_key_routes(api: Api) -> None:
    """Mount /v1/keys on `api` (once)."""
    if any(route.path == "/v1/keys" for route in api.routes):
        return
    api.path_types.setdefault("key_id", TypeAdapter(KeyId))

    @api.get("/v1/keys", query=KeysQuery, response=KeyList, roles=ADMIN, name="list_keys")
    async def list_keys(call: Call[None, KeysQuery]) -> KeyList:
        """API keys newest first, without their secrets (`role`, `status` filter; `cursor` pages)."""
        q = call.query
        page = await keys.list_keys(call.pool, role=q.role, status=q.status, cursor=q.cursor, limit=q.limit)
        return KeyList(items=[KeyOut.model_validate(item) for item in page.items], next_cursor=page.next_cursor)

    @api.post("/v1/keys", body=KeyIn, response=KeyCreated, status=201, roles=ADMIN, name="create_key",
              extra_responses={409: "Idempotency-Key reused with another body"})
    async def create_key(call: Call[KeyIn, None]) -> Any:
        """Create a key (a store key needs an existing `location_id`); `key` is shown in this answer only.
        `Idempotency-Key` is optional: a replay returns the record with `key: null`."""
        request = _request(call.body)
        admin_key = bearer_key(call.request.headers.get("Authorization"))
        if "Idempotency-Key" not in call.request.headers:
            async with transaction(call.pool) as conn:
                key, record = await keys.issue_key(conn, request, admin_key=admin_key)
            return Reply(201, KeyCreated(**KeyOut.model_validate(record).model_dump(), key=key))
        scope, idem_key, fingerprint = call.idempotency()
        minted: list[str] = []
        async with transaction(call.pool) as conn:

            async def work() -> tuple[int, Any]:
                key, record = await keys.issue_key(conn, request, admin_key=admin_key)
                minted.append(key)
                return 201, to_jsonable(KeyCreated(**KeyOut.model_validate(record).model_dump(), key=None))

            stored = await run_once(conn, scope, idem_key, fingerprint, work)
        if stored.replayed:
            return Reply(stored.status, stored.body, {"Idempotent-Replayed": "true"})
        return Reply(201, {**stored.body, "key": minted[0]})

    @api.post("/v1/keys/{key_id}/revoke", response=KeyOut, roles=ADMIN, name="revoke_key",
              extra_responses={404: "no such key", 409: "the last active admin key"})
    async def revoke_key(call: Call[None, None]) -> KeyOut:
        """Revoke a key: every service refuses it within a second. Revoking a revoked key changes nothing."""
        admin_key = bearer_key(call.request.headers.get("Authorization"))
        async with transaction(call.pool) as conn:
            record = await keys.revoke_key(conn, int(call.path("key_id")), admin_key=admin_key)
        return KeyOut.model_validate(record)
