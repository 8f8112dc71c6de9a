import pytest

from ledger import policy
from ledger.policy import PermissionDenied

SALE, SUMMARY = policy.RECONCILED_SALE, policy.RECONCILIATION_SUMMARY
ROLES = ("admin", "ops", "store", "shop", "finance", "auditor")


@pytest.mark.parametrize("org", ["ops", "finance", "audit", "ledger", "nobody"])
@pytest.mark.parametrize("kind", [SALE, SUMMARY, "something_else"])
def test_only_finance_appends_reconciled_sales_and_summaries(org: str, kind: str) -> None:
    allowed = org == "finance" and kind in (SALE, SUMMARY)
    assert policy.may_append(org, kind) is allowed
    if allowed:
        policy.require_append(org, kind)
    else:
        with pytest.raises(PermissionDenied):
            policy.require_append(org, kind)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_appends_as_its_org_only_where_allowed(role: str) -> None:
    if role == "finance":
        assert policy.require_role_append(role, SALE) == "finance"
    else:
        with pytest.raises(PermissionDenied):
            policy.require_role_append(role, SALE)


READABLE = {
    "admin": {SUMMARY},
    "ops": {SUMMARY},
    "finance": {SALE, SUMMARY},
    "auditor": {SALE, SUMMARY},
    "store": set(),
    "shop": set(),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", [SALE, SUMMARY, "unknown"])
def test_read_rights_per_role_and_kind(role: str, kind: str) -> None:
    allowed = kind in READABLE[role]
    assert policy.may_read_kind(role, kind) is allowed
    if not allowed:
        with pytest.raises(PermissionDenied, match=role):
            policy.require_read_kind(role, kind)


@pytest.mark.parametrize("role", ROLES)
def test_stores_and_the_shop_cannot_read_the_log_and_only_finance_and_audit_export(role: str) -> None:
    for check, allowed in (
        (policy.require_read_log, role not in ("store", "shop")),
        (policy.require_export, role in ("finance", "auditor")),
    ):
        if allowed:
            check(role)
        else:
            with pytest.raises(PermissionDenied):
                check(role)


def test_an_unknown_role_gets_nothing() -> None:
    assert policy.org_for_role("root") is None
    assert not policy.may_read_kind("root", SUMMARY)
