"""Who may append which entry kinds, and who may read what. Pure rules, default deny.

Append: reconciled sales and reconciliation summaries are finance's statements; no other
organisation may put them on the ledger (the verifier applies the same rule to every signed batch).
Checkpoints: only the ledger signs them; finance co-signs (after checking the new tree extends the
one it co-signed before). A checkpoint counts as complete, for an export bundle and the offline
verifier, once every organisation in CHECKPOINT_SIGNERS has signed it.
Read: finance and audit read every entry; ops reads summaries only (totals, not individual sales);
stores and the online shop read nothing from the ledger, not even checkpoints.

API roles map to organisations: admin and ops act as `ops`, finance as `finance`, auditor as
`audit`; store and shop have no organisation. admin is an operator, not an accountant, so it gets
ops's view rather than everything.
"""

from collections.abc import Mapping

RECONCILED_SALE = "reconciled_sale"
RECONCILIATION_SUMMARY = "reconciliation_summary"
ENTRY_KINDS = (RECONCILED_SALE, RECONCILIATION_SUMMARY)

APPEND: Mapping[str, frozenset[str]] = {
    RECONCILED_SALE: frozenset({"finance"}),
    RECONCILIATION_SUMMARY: frozenset({"finance"}),
}
READ: Mapping[str, frozenset[str]] = {
    "finance": frozenset(ENTRY_KINDS),
    "audit": frozenset(ENTRY_KINDS),
    "ops": frozenset({RECONCILIATION_SUMMARY}),
}
ROLE_ORGS: Mapping[str, str | None] = {
    "admin": "ops",
    "ops": "ops",
    "finance": "finance",
    "auditor": "audit",
    "store": None,
    "shop": None,
}
CHECKPOINT_SIGNER = "ledger"
CHECKPOINT_COSIGNERS = frozenset({"finance"})
CHECKPOINT_SIGNERS = (CHECKPOINT_SIGNER, *sorted(CHECKPOINT_COSIGNERS))  # what a complete checkpoint needs
# Whole-log exports carry every entry of a range; only those who may read every kind get them.
EXPORTERS = frozenset({"finance", "audit"})


class PermissionDenied(Exception):
    """A principal tried something the ledger policy does not allow (the HTTP layer makes it a 403)."""

    def __init__(self, principal: str, action: str, detail: str) -> None:
        super().__init__(f"{principal} may not {action}: {detail}")
        self.principal = principal
        self.action = action
        self.detail = detail


def org_for_role(role: str) -> str | None:
    return ROLE_ORGS.get(role)


def may_append(org: str, kind: str) -> bool:
    return org in APPEND.get(kind, frozenset())


def require_append(org: str, kind: str) -> None:
    if not may_append(org, kind):
        raise PermissionDenied(org, f"append {kind!r} entries", "only " + _names(APPEND.get(kind)) + " may")


def require_cosign(org: str) -> None:
    if org not in CHECKPOINT_COSIGNERS:
        raise PermissionDenied(org, "co-sign checkpoints", "only " + _names(CHECKPOINT_COSIGNERS) + " may")


def missing_signers(signed_by: set[str] | frozenset[str]) -> list[str]:
    """The organisations a checkpoint still needs, in CHECKPOINT_SIGNERS order."""
    return [org for org in CHECKPOINT_SIGNERS if org not in signed_by]


def require_role_append(role: str, kind: str) -> str:
    """The org an API role appends as, if it may append `kind`."""
    org = org_for_role(role)
    if org is None:
        raise PermissionDenied(role, f"append {kind!r} entries", "this role has no ledger organisation")
    require_append(org, kind)
    return org


def may_read_kind(role: str, kind: str) -> bool:
    org = org_for_role(role)
    return org is not None and kind in READ.get(org, frozenset())


def require_read_kind(role: str, kind: str) -> None:
    if not may_read_kind(role, kind):
        raise PermissionDenied(role, f"read {kind!r} entries", "not granted to this role")


def require_read_log(role: str) -> None:
    """Checkpoints, consistency proofs and identities: any role with a ledger organisation."""
    if org_for_role(role) is None:
        raise PermissionDenied(role, "read the ledger", "this role has no ledger organisation")


def require_export(role: str) -> None:
    if org_for_role(role) not in EXPORTERS:
        raise PermissionDenied(role, "export ledger bundles", "only finance and audit may")


def _names(orgs: frozenset[str] | None) -> str:
    return " and ".join(sorted(orgs)) if orgs else "no organisation"


# --- Hyperledger Fabric -----------------------------------------------------------------------
# On Fabric every transaction names its creator by MSP id (verified by the peer against that MSP's CA).
# An MSP acts for some of our organisations: the retailer's clients submit what ops, finance and the
# ledger sign; the audit firm's clients only what audit signs. A finance submission relayed by an audit
# client is refused, however valid finance's own signature is.
DEFAULT_FABRIC_MSP_ORGS: Mapping[str, frozenset[str]] = {
    "RetailerMSP": frozenset({"ops", "finance", "ledger"}),
    "AuditMSP": frozenset({"audit"}),
}
# The organisations (the O= of their Fabric CA and peer certificates) whose peers must endorse a
# checkpoint for an auditor to accept it: the retailer's and the audit firm's, as the endorsement policy
# AND('RetailerMSP.peer','AuditMSP.peer') requires of every transaction.
DEFAULT_CHECKPOINT_ENDORSERS = ("retailer.omnistock.local", "audit.omnistock.local")


def require_msp_acts_for(msp_orgs: Mapping[str, frozenset[str]], msp_id: str, org: str) -> None:
    if org not in msp_orgs.get(msp_id, frozenset()):
        raise PermissionDenied(msp_id, f"submit what {org!r} signs",
                               f"the MSP acts for {_names(msp_orgs.get(msp_id))}")


def require_known_msp(msp_orgs: Mapping[str, frozenset[str]], msp_id: str, action: str) -> None:
    if not msp_orgs.get(msp_id):
        raise PermissionDenied(msp_id, action, "this MSP acts for no organisation of the ledger")
