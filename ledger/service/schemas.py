"""Request and response models of the ledger API (../shared/CONTRACT.md, Ledger).

Entries are stored exactly as sent (after these checks), because the bytes are what gets signed:
the models check the fields the ledger itself relies on and let every other field through.

    reconciled_sale         {kind, business_day: "YYYY-MM-DD", channel, location_id: str|null,
                             sales_total: "12.30" (negative for returns), currency: "EUR", ...}
                            (the shape services/finance/ledger_commit.py writes)
    reconciliation_summary  {kind, business_day: "YYYY-MM-DD", ...}
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ledger.signing import Submission
from shared.text import FreeText

DAY = r"^\d{4}-\d{2}-\d{2}$"
Day = Annotated[str, StringConstraints(pattern=DAY)]
Amount = Annotated[str, StringConstraints(pattern=r"^-?\d{1,15}\.\d{2}$")]
Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Seq = Annotated[int, Field(ge=0, le=2**62)]


def _real_day(value: str) -> str:
    date.fromisoformat(value)  # 2024-02-30 matches the pattern but is no day
    return value


class ReconciledSale(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    kind: Literal["reconciled_sale"]
    business_day: Day
    channel: Annotated[FreeText, StringConstraints(min_length=1, max_length=64)]
    location_id: Annotated[FreeText, StringConstraints(min_length=1, max_length=64)] | None = None
    sales_total: Amount
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

    _day = field_validator("business_day")(_real_day)


class ReconciliationSummary(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    kind: Literal["reconciliation_summary"]
    business_day: Day

    _day = field_validator("business_day")(_real_day)


LedgerEntry = Annotated[ReconciledSale | ReconciliationSummary, Field(discriminator="kind")]


class SubmissionIn(BaseModel):
    """The submitter's signature over the entries (ledger.signing.Submission; make it with
    `omnistock ledger sign` or ledger.signing.sign_submission)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    org: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    cert_pem: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    timestamp: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    signature: Annotated[str, StringConstraints(min_length=1, max_length=256)]

    def submission(self) -> Submission:
        return Submission(self.org, self.cert_pem, self.timestamp, self.signature)


class AppendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: Annotated[list[LedgerEntry], Field(min_length=1, max_length=10_000)]
    submission: SubmissionIn | None = None  # required: its absence is refused as unsigned-batch

    def raw_entries(self) -> list[dict[str, Any]]:
        # exclude_unset: an entry is signed as sent, without defaults the client never wrote.
        return [entry.model_dump(exclude_unset=True) for entry in self.entries]


class ReceiptOut(BaseModel):
    seq: int
    leaf_hash: str
    batch_id: int


class AppendOut(BaseModel):
    receipts: list[ReceiptOut]


class SignatureOut(BaseModel):
    org: str
    cert_pem: str
    signature: str  # base64 DER ECDSA P-256 over the canonical checkpoint statement


class CheckpointOut(BaseModel):
    tree_size: int
    root_hash: str  # lowercase hex
    timestamp: str  # RFC 3339 UTC, the exact text that was signed
    signatures: list[SignatureOut]


class LatestCheckpointOut(CheckpointOut):
    required_signers: list[str]  # the organisations the policy wants on a complete checkpoint
    missing_signers: list[str]  # of those, who has not signed this one yet (finance co-signs within seconds)


class EntryOut(BaseModel):
    seq: int
    entry: dict[str, Any]
    leaf_hash: str
    inclusion_proof: list[str]
    checkpoint: CheckpointOut


class FindQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entry_key: Annotated[str, StringConstraints(min_length=1, max_length=300)] | None = None
    order_id: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^:\s]+$")] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> FindQuery:
        if (self.order_id is None) == (self.entry_key is None):
            raise ValueError("give exactly one of entry_key and order_id")
        return self


class FoundEntry(BaseModel):
    seq: int
    kind: str


class FoundList(BaseModel):
    items: list[FoundEntry]


class ConsistencyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first: Seq
    second: Seq | None = None


class ConsistencyOut(BaseModel):
    first: int
    second: int
    first_root: str
    second_root: str
    proof: list[str]
    checkpoint: CheckpointOut | None  # the signed checkpoint of size `second`, when there is one


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Seq = Field(alias="from")
    to: Seq
    since: Seq | None = None  # tree size of an earlier checkpoint to prove consistency with


class MemberOut(BaseModel):
    cert_pem: str
    serial: str
    fingerprint: str
    not_before: str
    not_after: str
    current: bool
    revoked: bool


class IdentityOut(BaseModel):
    org: str
    role: str
    ca_pem: str
    members: list[MemberOut]


class IdentitiesOut(BaseModel):
    items: list[IdentityOut]


class RevenueQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Day = Field(alias="from")
    to: Day


class RevenueGroupOut(BaseModel):
    business_day: str
    channel: str
    location_id: str | None
    currency: str
    sales: int
    amount: str


class FailureOut(BaseModel):
    seq: int | None
    message: str


class RevenueOut(BaseModel):
    from_: str = Field(serialization_alias="from")
    to: str
    verified: bool  # the whole log passed the audit the sums were read in
    first_bad_seq: int | None
    excluded_seqs: list[int]  # reconciled sales in range that failed verification, left out of the sums
    groups: list[RevenueGroupOut]
    failures: list[FailureOut]
    comparison: list[dict[str, Any]] | None  # differences with finance's revenue report; None: not wired


class AuditOut(BaseModel):
    ok: bool
    tree_size: int | None
    entries_checked: int
    batches_checked: int
    first_bad_seq: int | None
    failures: list[FailureOut]
    checkpoint_signers: list[str] = []  # valid signers of the latest checkpoint
    required_signers: list[str] = []  # what the policy requires on a complete checkpoint
    cosigned_size: int | None = None  # the latest checkpoint signed by all of them
    checked_at: datetime  # the run's snapshot of the log was taken then (ledger/service/audit_job.py)
    finished_at: datetime
    duration_s: float
    current: bool  # checked the log's current tree size, within OMNISTOCK_LEDGER_AUDIT_MAX_AGE_S


class AuditJobOut(BaseModel):
    """The audit job: 202 from GET /v1/ledger/audit while it runs, and GET /v1/ledger/audit/job."""

    state: Literal["idle", "waiting", "running"]  # waiting: for another replica's audit to end
    tree_size: int | None  # the log's size when the running job was asked for
    requested_at: datetime | None
    started_at: datetime | None
    last: AuditOut | None  # the latest finished run, `current: false` once the log grew or it aged
    last_error: str | None  # why the latest run failed, if it did
