"""The Fabric backend: the ledger port (ledger.port.Ledger) over a peer's Gateway.

Appends. Each call brings one submitter's signed batch, as with the embedded backend. The log's head is
one key every append reads and writes, so two transactions endorsed on the same head cannot both
commit; instead of letting appenders race, one writer task sends whatever batches are waiting as ONE
transaction (group commit: up to `max_group_entries` entries), ordered by their signed timestamps. The
chaincode judges each batch on its own, so a refused one does not sink the others. A caller gets its
receipts only once the gateway's peer reports the transaction committed VALID; a transaction beaten to
the head by another process's (MVCC conflict) is endorsed again. While the network cannot endorse or
order (a required peer down), the writer retries the same work every `retry_s`, so appends stall and
resume, up to `append_timeout_s`; once a transaction is endorsed, only that same signed transaction is
ever submitted again (a repeat is a duplicate tx id, never a second append).

Checkpoints are transactions too: `checkpoint` records (size, root, time) of the tree and answers the
checkpoint statement, which the retailer's and the audit firm's peers both endorse (the channel's
endorsement policy). Those endorsements are the checkpoint's signatures; they are read back from the
committed transaction (qscc) when this process did not make them, so any process can serve any
checkpoint. There is nothing to co-sign: the organisations sign by endorsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from ledger import merkle, policy
from ledger.bundle import batch_record, entry_record, make_bundle
from ledger.encoding import canonical_bytes, parse_timestamp
from ledger.entries import encode_entries, entry_key_of, keys_in_append
from ledger.fabric import protocol
from ledger.fabric.audit import audit_checkpoints
from ledger.fabric.chaincode.contract import CHECKPOINT_EVENT
from ledger.fabric.gateway import (
    ChaincodeRefused,
    FabricUnavailable,
    Gateway,
    GatewayConfig,
    Prepared,
)
from ledger.fabric.refusals import refusal, whole_refusal
from ledger.fabric.transactions import until_committed
from ledger.identity import TrustStore, cert_org, msp_dir
from ledger.port import (
    BadRange,
    CheckpointNotFound,
    Entry,
    EntryNotFound,
    EntryVisitor,
    Json,
    Receipt,
    Submission,
)
from ledger.verify import VerificationReport, verify_bundle
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("omnistock.ledger.fabric")
NODES_PER_READ = 20_000
BATCH_SEQS_PER_READ = 20_000


@dataclass
class _Pending:
    future: asyncio.Future[Any]
    group: dict[str, Any] | None = None  # None: a checkpoint request
    count: int = 0


@dataclass
class FabricSettings:
    checkpoint_every: int = 10_000
    max_export_entries: int = 100_000
    max_group_entries: int = 20_000
    commit_timeout_s: float = 60.0
    append_timeout_s: float = 300.0
    retry_s: float = 1.0
    endorsers: tuple[str, ...] = policy.DEFAULT_CHECKPOINT_ENDORSERS


class FabricLedger:
    def __init__(self, gateway: Gateway, trust: Callable[[], TrustStore], settings: FabricSettings | None = None
                 ) -> None:
        self.gateway = gateway
        self.trust = trust  # our organisations' CAs and the peer organisations' (for audit)
        self.settings = settings or FabricSettings()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._signed: dict[int, Json] = {}  # tree size -> checkpoint with its endorsements
        self._checkpointed = 0  # the tree size of the latest checkpoint this process knows

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        while not self._queue.empty():  # nobody waits forever for a writer that is gone
            _fail(self._queue.get_nowait(), FabricUnavailable("the ledger port was closed"))
        await self.gateway.close()

    # --- writes -----------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry], submission: Submission) -> list[Receipt]:
        if not entries:
            raise ValueError("an append needs at least one entry")
        # The chaincode refuses these too; checked here first so a malformed batch never takes a seat
        # in a shared transaction (the same shared functions, so the same refusals).
        encoded = encode_entries(entries)
        keys_in_append([kind for kind, _ in encoded], [entry_key_of(e, p) for p, e in enumerate(entries)])
        group = {"entries": [dict(e) for e in entries], "submission": submission.as_json()}
        result = await self._enqueue(_Pending(asyncio.get_running_loop().create_future(), group, len(entries)))
        return list(result)

    async def cut_checkpoint(self) -> Json | None:
        return await self._enqueue(_Pending(asyncio.get_running_loop().create_future()))  # type: ignore[no-any-return]

    async def cut_checkpoint_if_due(self, max_age_s: float) -> Json | None:
        """The ledger service's timer: cut if the tree grew by `checkpoint_every` since the last checkpoint,
        or grew at all and the last one is `max_age_s` old (each checkpoint is a transaction)."""
        head = await self._head()
        latest = head["checkpoint"]
        if latest is not None:
            grown = head["size"] - latest["tree_size"]
            age = (datetime.now(UTC) - parse_timestamp(latest["timestamp"])).total_seconds()
            if grown == 0 or (grown < self.settings.checkpoint_every and age < max_age_s):
                return await self.with_signatures(latest)
        return await self.cut_checkpoint()

    async def cosign(self, tree_size: int, signature: Mapping[str, str]) -> Json:
        raise policy.PermissionDenied(str(signature.get("org")), "co-sign checkpoints",
                                      "on Fabric each organisation's peer endorses every checkpoint")

    async def _enqueue(self, pending: _Pending) -> Any:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name="fabric-ledger-writer")
        await self._queue.put(pending)
        return await pending.future

    async def _write_forever(self) -> None:
        while True:
            work = [await self._queue.get()]
            count = work[0].count
            while not self._queue.empty() and count < self.settings.max_group_entries:
                work.append(self._queue.get_nowait())
                count += work[-1].count
            appends = [p for p in work if p.group is not None]
            cuts = [p for p in work if p.group is None]
            try:
                if appends:
                    await self._append_groups(appends)
                if cuts:
                    checkpoint = await self._cut()
                    for p in cuts:
                        _resolve(p, checkpoint)
            except Exception as exc:  # the callers hear of it; the writer stays up for the next ones
                for p in work:
                    _fail(p, exc)

    async def _append_groups(self, pending: list[_Pending]) -> None:
        # The log's times never go back: earlier-signed batches first, so none is stale only because a
        # later-signed one happened to be queued before it.
        pending.sort(key=lambda p: p.group["submission"]["timestamp"] if p.group else "")
        prepared = await self._commit("append", [p.group for p in pending],
                                      commit=lambda results: any("receipts" in r for r in results))
        results = json.loads(prepared.result)
        size = max((r["receipts"][-1][0] + 1 for r in results if r.get("receipts")), default=0)
        if size - self._checkpointed >= self.settings.checkpoint_every:
            # Before the appends return, as the embedded backend cuts inside the append; but they are
            # committed already, so a failed cut must not report them failed (the timer cuts again).
            try:
                await self._cut()
            except Exception:
                log.exception("checkpoint after an append failed; the next cut covers it")
        for p, result in zip(pending, results, strict=True):
            if "receipts" in result:
                _resolve(p, [Receipt(seq, leaf, batch) for seq, leaf, batch in result["receipts"]])
            else:
                _fail(p, refusal(result))

    async def _commit(self, function: str, *args: Any, commit: Callable[[Any], bool] = lambda _: True) -> Prepared:
        return await until_committed(self.gateway, function, list(args), commit=commit,
                                     timeout_s=self.settings.append_timeout_s,
                                     commit_timeout_s=self.settings.commit_timeout_s, retry_s=self.settings.retry_s)

    async def _cut(self) -> Json | None:
        head = await self._head()
        if head["size"] == 0:
            return None
        latest = head["checkpoint"]
        if latest is not None and latest["tree_size"] == head["size"]:
            return await self.with_signatures(latest)
        prepared = await self._commit("checkpoint")
        statement = json.loads(prepared.result)
        checkpoint = {key: statement[key] for key in ("tree_size", "root_hash", "timestamp")}
        checkpoint["signatures"] = protocol.signature_records(prepared.action)
        self._signed[checkpoint["tree_size"]] = checkpoint
        self._checkpointed = max(self._checkpointed, checkpoint["tree_size"])
        return checkpoint

    # --- reads ------------------------------------------------------------------------------

    async def evaluate(self, function: str, *args: Any) -> Any:
        encoded = [json.dumps(a, separators=(",", ":"), ensure_ascii=False) for a in args]
        try:
            return json.loads(await self.gateway.evaluate(function, *encoded))
        except ChaincodeRefused as exc:
            raise whole_refusal(exc.message) from None

    async def _head(self) -> Json:
        head: Json = await self.evaluate("head")
        if head["checkpoint"]:
            self._checkpointed = max(self._checkpointed, head["checkpoint"]["tree_size"])
        return head

    async def with_signatures(self, record: Mapping[str, Any]) -> Json:
        size = record["tree_size"]
        if size not in self._signed:
            action = await self.gateway.committed_transaction(record["txid"])
            self._signed[size] = {"tree_size": size, "root_hash": record["root_hash"],
                                  "timestamp": record["timestamp"], "signatures": protocol.signature_records(action)}
        return self._signed[size]

    async def checkpoint(self) -> Json | None:
        latest = (await self._head())["checkpoint"]
        return await self.with_signatures(latest) if latest else None

    async def checkpoint_of_size(self, tree_size: int) -> Json:
        record = await self.evaluate("checkpoint_of_size", tree_size)
        if record is None:
            raise CheckpointNotFound(f"no checkpoint of tree size {tree_size}")
        return await self.with_signatures(record)

    async def follow_checkpoints(self, start_block: int | None = 0) -> AsyncIterator[Json]:
        """Every checkpoint as its transaction commits, with its endorsements (the chaincode's checkpoint
        events through the Gateway), from `start_block` (0: all of them; None: from now on)."""
        async for _, event in self.gateway.chaincode_events(start_block):
            if event.event_name != CHECKPOINT_EVENT:
                continue
            statement = json.loads(event.payload)
            yield await self.with_signatures({"tree_size": statement["tree_size"], "root_hash": statement["root_hash"],
                                               "timestamp": statement["timestamp"], "txid": event.tx_id})

    async def latest_cosigned(self, org: str) -> Json | None:
        latest = await self.checkpoint()
        return latest if latest and any(s["org"] == org for s in latest["signatures"]) else None

    async def find(self, *, entry_key: str | None = None, order_id: str | None = None,
                   limit: int = 50) -> list[tuple[int, str]]:
        return [(seq, kind) for seq, kind in await self.evaluate("find", entry_key, order_id, limit)]

    async def read_nodes(self, wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        wanted = list(dict.fromkeys(wanted))
        found: dict[tuple[int, int], bytes] = {}
        for start in range(0, len(wanted), NODES_PER_READ):
            chunk = wanted[start:start + NODES_PER_READ]
            hashes = await self.evaluate("nodes", [list(pair) for pair in chunk])
            found.update(zip(chunk, (bytes.fromhex(h) for h in hashes), strict=True))
        return found

    async def _batches(self, first: int, last: int) -> list[Json]:
        batches: list[Json] = []
        seq = first
        while seq <= last:
            chunk = await self.evaluate("batches", seq, min(last, seq + BATCH_SEQS_PER_READ - 1))
            if not chunk:
                break
            batches += [b for b in chunk if not batches or b["first_seq"] > batches[-1]["last_seq"]]
            seq = batches[-1]["last_seq"] + 1
        return batches

    async def _covering(self, last: int) -> Json:
        """The latest checkpoint, cut now if it does not cover seq `last` yet."""
        latest = await self.checkpoint()
        if latest is None or last >= latest["tree_size"]:
            latest = await self.cut_checkpoint()
        if latest is None or last >= latest["tree_size"]:
            raise BadRange(f"the log has {latest['tree_size'] if latest else 0} entries")
        return latest

    async def entry(self, seq: int) -> Json:
        head = await self._head()
        if not 0 <= seq < head["size"]:
            raise EntryNotFound(f"no entry with seq {seq}")
        checkpoint = await self._covering(seq)
        size = checkpoint["tree_size"]
        [batch] = await self.evaluate("batches", seq, seq)
        entry = batch["entries"][seq - batch["first_seq"]]
        nodes = await self.read_nodes(merkle.inclusion_proof_nodes(seq, size))
        proof = merkle.inclusion_proof(seq, size, lambda level, index: nodes[level, index])
        return {"seq": seq, "entry": entry, "leaf_hash": merkle.leaf_hash(canonical_bytes(entry)).hex(),
                "inclusion_proof": [h.hex() for h in proof], "checkpoint": checkpoint}

    async def consistency(self, first: int, second: int | None = None) -> Json:
        latest = await self.checkpoint()
        latest_size = latest["tree_size"] if latest else 0
        second = latest_size if second is None else second
        if not 0 <= first <= second <= latest_size:
            raise BadRange(f"need 0 <= first <= second <= {latest_size} (the latest checkpoint's size)")
        nodes = await self.read_nodes([*merkle.consistency_proof_nodes(first, second), *merkle.decomposition(first),
                                   *merkle.decomposition(second)])

        def get(level: int, index: int) -> bytes:
            return nodes[level, index]

        def root(size: int) -> bytes:
            return merkle.subtree_hash(0, size, get) if size else merkle.EMPTY_ROOT

        try:
            signed: Json | None = await self.checkpoint_of_size(second)
        except CheckpointNotFound:
            signed = None
        return {"first": first, "second": second, "first_root": root(first).hex(), "second_root": root(second).hex(),
                "proof": [h.hex() for h in merkle.consistency_proof(first, second, get)], "checkpoint": signed}

    async def export(self, first: int, last: int, since: int | None = None, *, limit: bool = True) -> Json:
        if not 0 <= first <= last:
            raise BadRange("need 0 <= from <= to")
        if limit and last - first + 1 > self.settings.max_export_entries:
            raise BadRange(f"at most {self.settings.max_export_entries} entries per export")
        latest = await self._covering(last)
        size = latest["tree_size"]
        earlier, proof = None, []
        if since is not None:
            if since > size:
                raise BadRange(f"no checkpoint of tree size {since} at or before {size}")
            try:
                earlier = await self.checkpoint_of_size(since)
            except CheckpointNotFound:
                raise BadRange(f"no checkpoint of tree size {since} at or before {size}") from None
            cnodes = await self.read_nodes(merkle.consistency_proof_nodes(since, size))
            proof = merkle.consistency_proof(since, size, lambda level, index: cnodes[level, index])
        batches = await self._batches(first, last)
        wanted = [node for seq in range(first, last + 1) for node in merkle.inclusion_proof_nodes(seq, size)]
        nodes = await self.read_nodes(wanted)

        def get(level: int, index: int) -> bytes:
            return nodes[level, index]

        entries, records = [], []
        for b in batches:
            leaves = [merkle.leaf_hash(canonical_bytes(e)) for e in b["entries"]]
            inside = first <= b["first_seq"] and b["last_seq"] <= last
            records.append(batch_record(b, None if inside else leaves))
            for offset, entry in enumerate(b["entries"]):
                seq = b["first_seq"] + offset
                if first <= seq <= last:
                    entries.append(entry_record(seq, entry, merkle.inclusion_proof(seq, size, get)))
        return make_bundle(latest, entries, records, earlier, proof)

    async def audit(self, visit: EntryVisitor | None = None) -> VerificationReport:
        """The whole log as one bundle (every entry, batch and proof up to a checkpoint cut now),
        through the offline verifier with this process's trust: our CAs and the peer organisations'."""
        head = await self._head()
        if head["size"] == 0:
            return VerificationReport(tree_size=0)
        bundle = await self.export(0, head["size"] - 1, limit=False)
        trust = self.trust()
        report = verify_bundle(bundle, trust, endorsers=self.settings.endorsers)
        if visit is not None:
            for record in bundle["entries"]:
                visit(record["seq"], record["entry"])
        await audit_checkpoints(self, bundle["checkpoint"]["tree_size"], trust, report)
        report.cosigned_size = report.tree_size if report.ok else None
        return report

def _resolve(pending: _Pending, value: Any) -> None:
    if not pending.future.done():
        pending.future.set_result(value)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)


def trust_store(msp_dir: Path, fabric_cas: Sequence[Path]) -> TrustStore:
    """Our organisations' trust directory plus the Fabric CA certificates of the peer organisations."""
    base = TrustStore.from_dir(msp_dir)
    cas = {org: list(certs) for org, certs in base.cas.items()}
    for path in fabric_cas:
        for cert in x509.load_pem_x509_certificates(Path(path).read_bytes()):
            cas.setdefault(cert_org(cert), []).append(cert)
    return TrustStore({org: tuple(certs) for org, certs in cas.items()}, base.members, base.revoked)


@asynccontextmanager
async def open_fabric_ledger(settings: Settings, network: Mapping[str, Any], org: str = "retailer",
                             user: str = "User1") -> AsyncIterator[FabricLedger]:
    """The port as `org`'s client `user` sees it, from the network.json of ledger.fabric.network."""
    gateway = Gateway(GatewayConfig.from_network(dict(network), org, user))
    cas = [Path(peer_org["ca_cert"]) for peer_org in network["orgs"].values()]
    ledger = FabricLedger(gateway, lambda: trust_store(msp_dir(settings.data_dir), cas), FabricSettings(
        checkpoint_every=settings.ledger_checkpoint_every, max_export_entries=settings.ledger_max_export_entries,
        endorsers=tuple(settings.fabric_checkpoint_endorsers)))
    try:
        yield ledger
    finally:
        await ledger.close()
