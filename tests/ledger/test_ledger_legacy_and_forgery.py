"""A log kept from before submitters signed their own batches (the backend signed them, naming seqs,
and finance's co-signature sat inside the checkpoint row) still audits and exports clean beside new
batches; a batch forged directly in the database, with any signature but finance's own, does not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger import identity, merkle, signing
from ledger.encoding import canonical_bytes, format_timestamp
from ledger.identity import Identity
from ledger.postgres import repository as repo
from ledger.verify import verify_bundle
from shared.settings import Settings
from tests.ledger.conftest import append, cosign, ledger_port, sale, summary


async def write_as_before(pool: asyncpg.Pool, batches: list[list[dict[str, Any]]], finance: Identity,
                          ledger_id: Identity) -> merkle.Frontier:
    """What the backend wrote before issue 12: batches it signed with finance's key over seqs, and a
    checkpoint with both signatures in one row."""
    frontier = merkle.Frontier()
    async with pool.acquire() as conn, conn.transaction():
        for batch_id, entries in enumerate(batches):
            leaves = [merkle.leaf_hash(canonical_bytes(e)) for e in entries]
            first, stamp = frontier.size, format_timestamp(datetime.now(UTC))
            batch = signing.sign_batch(finance, first, first + len(leaves) - 1, leaves, stamp)
            await repo.insert_batch(conn, batch_id, {**batch, "statement": signing.LEGACY_BATCH})
            await repo.insert_entries(conn, [(first + n, batch_id, e["kind"], canonical_bytes(e), leaf, None)
                                             for n, (e, leaf) in enumerate(zip(entries, leaves, strict=True))])
            await repo.insert_nodes(conn, [(n.level, n.index, n.hash) for n in frontier.extend(leaves)])
        checkpoint = signing.sign_checkpoint(frontier.size, frontier.root(), format_timestamp(datetime.now(UTC)),
                                             [ledger_id, finance])
        await repo.insert_checkpoint(conn, checkpoint)
    return frontier


async def test_batches_and_checkpoints_of_the_old_form_still_verify_beside_new_ones(
        ledger_settings: Settings, pool: asyncpg.Pool) -> None:
    identity.init_identities(ledger_settings.data_dir)
    finance = identity.load_identity(ledger_settings.data_dir, "finance")
    ledger_id = identity.load_identity(ledger_settings.data_dir, "ledger")
    await write_as_before(pool, [[sale(0), sale(1)], [summary()]], finance, ledger_id)
    async with ledger_port(ledger_settings) as port:
        old = await port.checkpoint()
        assert old is not None and [s["org"] for s in old["signatures"]] == ["ledger", "finance"]
        assert await port.latest_complete() == old  # finance's old co-signature counts
        await append(port, [sale(3), sale(4)], finance)
        await port.cut_checkpoint()
        cosigned = await cosign(port, finance, ledger_settings)  # checks it extends the old one
        assert cosigned is not None and cosigned["tree_size"] == 5
        report = await port.audit()
        assert report.ok, report.summary()
        assert report.batches_checked == 3 and report.cosigned_size == 5
        bundle = await port.export(0, 4, since=3)
    assert [b.get("statement") for b in bundle["batches"]] == ["batch", "batch", "submission"]
    verified = verify_bundle(bundle, identity.TrustStore.from_dir(identity.msp_dir(ledger_settings.data_dir)))
    assert verified.ok, verified.summary()
    # A bundle exported before the upgrade has no "statement" at all: still the old form.
    for batch in bundle["batches"][:2]:
        del batch["statement"]
    bundle.pop("earlier")
    assert verify_bundle(bundle, identity.TrustStore.from_dir(identity.msp_dir(ledger_settings.data_dir))).ok
    # Nor can a batch's form be switched: its signature covers the statement's own kind.
    bundle["batches"][0]["statement"] = "submission"
    switched = verify_bundle(bundle, identity.TrustStore.from_dir(identity.msp_dir(ledger_settings.data_dir)))
    assert not switched.ok and switched.first_bad_seq == 0


async def test_a_batch_forged_in_the_database_fails_the_audit_at_its_seq(
        ledger_settings: Settings, pool: asyncpg.Pool) -> None:
    identity.init_identities(ledger_settings.data_dir)
    finance = identity.load_identity(ledger_settings.data_dir, "finance")
    ops = identity.load_identity(ledger_settings.data_dir, "ops")
    async with ledger_port(ledger_settings) as port:
        await append(port, [sale(0), sale(1)], finance)
        forged = [sale(2, amount="1000000.00")]
        leaves = signing.entry_leaves(forged)
        # Someone with the database but not finance's key: finance's certificate, another key's signature.
        by_ops = signing.sign_submission(ops, forged)
        async with pool.acquire() as conn, conn.transaction():
            await repo.insert_batch(conn, 1, {
                "org": "finance", "first_seq": 2, "last_seq": 2, "timestamp": by_ops.timestamp,
                "batch_root": merkle.root(leaves).hex(), "cert_pem": finance.cert_pem,
                "signature": by_ops.signature, "statement": signing.SUBMISSION})
            await repo.insert_entries(conn, [(2, 1, "reconciled_sale", canonical_bytes(forged[0]), leaves[0], None)])
            frontier = merkle.Frontier.from_store(2, lambda level, index: merkle.node_hash(
                merkle.leaf_hash(canonical_bytes(sale(0))), merkle.leaf_hash(canonical_bytes(sale(1)))))
            await repo.insert_nodes(conn, [(n.level, n.index, n.hash) for n in frontier.extend(leaves)])
        report = await port.audit()
    assert not report.ok and report.first_bad_seq == 2, report.summary()
    assert any("signature does not verify" in f.message for f in report.failures), report.summary()
