"""The auditor's browser and `omnistock ledger verify` agree: the same bundle files and the same trust
folder, honest and tampered in several ways, get the same verdict, the same number of problems and the
same first bad seq from verify.js (WebCrypto, in Debian's chromium) as from ledger/verify.py."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from ledger import encoding, identity, merkle, signing
from ledger.bundle import dump_bundle
from ledger.verify import verify_bundle_file
from tests.browser.conftest import PASSWORD, Stack, UserFactory, signed_and_cosigned
from tests.browser.harness import assert_accessible, screenshot, sign_in
from tests.ledger.conftest import sale as ledger_sale
from tests.ledger.test_ledger_verify import MemoryLog, at, sale, summary


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    """An honest bundle (with an earlier checkpoint and its consistency proof), the auditor's trust
    folder (certificates only), and the data folder its keys live in."""
    data = tmp_path_factory.mktemp("ledger-data")
    identity.init_identities(data, now=datetime(2024, 1, 1, tzinfo=UTC))
    signers = {org: identity.load_identity(data, org) for org in identity.ORGS}
    log = MemoryLog()
    log.append(signers["finance"], [sale(n) for n in range(5)], at(1))
    log.append(signers["finance"], [sale(n) for n in range(5, 7)] + [summary(7)], at(2))
    log.append(signers["finance"], [sale(8)], at(3))
    cosigners = [signers["ledger"], signers["finance"]]
    earlier = signing.sign_checkpoint(5, merkle.root([log.leaf(s) for s in range(5)]), at(1), cosigners)
    bundle = json.loads(dump_bundle(log.export(log.checkpoint(cosigners, at(5)), earlier=earlier)))
    trust = tmp_path_factory.mktemp("trust")
    for pem in identity.msp_dir(data).rglob("*.pem"):
        shutil.copy(pem, trust / f"{pem.parent.name}-{pem.name}")
    return bundle, trust, data


def flip_base64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def altered_amount(b: dict[str, Any]) -> None:
    b["entries"][3]["entry"]["sales_total" if "sales_total" in b["entries"][3]["entry"] else "amount"] = "999.99"


def altered_checkpoint_signature(b: dict[str, Any]) -> None:
    sig = next(s for s in b["checkpoint"]["signatures"] if s["org"] == "finance")
    sig["signature"] = flip_base64(sig["signature"])


def altered_batch_signature(b: dict[str, Any]) -> None:
    b["batches"][1]["signature"] = flip_base64(b["batches"][1]["signature"])


def float_amount(b: dict[str, Any]) -> None:
    b["entries"][2]["entry"]["quantity"] = 1.5


def swapped_entries(b: dict[str, Any]) -> None:
    b["entries"][0]["entry"], b["entries"][1]["entry"] = b["entries"][1]["entry"], b["entries"][0]["entry"]


def dropped_cosignature(b: dict[str, Any]) -> None:
    b["checkpoint"]["signatures"] = [s for s in b["checkpoint"]["signatures"] if s["org"] != "finance"]


def rewritten_history(b: dict[str, Any]) -> None:
    b["earlier"]["consistency_proof"][0] = "00" * 32


CASES: list[tuple[str, Callable[[dict[str, Any]], None] | None]] = [
    ("honest", None), ("altered amount", altered_amount), ("checkpoint signature byte", altered_checkpoint_signature),
    ("batch signature byte", altered_batch_signature), ("a float", float_amount), ("swapped entries", swapped_entries),
    ("no co-signature", dropped_cosignature), ("bad consistency proof", rewritten_history),
]


async def browser_verdict(page: Page, bundle_file: Path, trust: Path) -> dict[str, str]:
    await page.set_input_files("#bundle", bundle_file)
    await page.set_input_files("#trust", trust)
    await page.click("#verify-form button[type=submit]")
    await page.wait_for_function("() => document.getElementById('verdict').dataset.ok !== undefined")
    return await page.evaluate("() => ({...document.getElementById('verdict').dataset,"
                               " text: document.getElementById('verdict').textContent})")


@pytest.fixture
async def verify_page(page: Page, console_stack: Stack, console_user: UserFactory) -> Page:
    await console_user("ada", role="auditor")
    await sign_in(page, console_stack.url("console"), "ada", PASSWORD)
    await page.goto(f"{console_stack.url('console')}/audit/verify")
    await assert_accessible(page)
    return page


async def test_the_browser_and_the_cli_agree_on_honest_and_tampered_bundles(
        verify_page: Page, books: tuple[dict[str, Any], Path, Path], tmp_path: Path) -> None:
    bundle, trust, _ = books
    seen = []
    for name, tamper in CASES:
        changed = json.loads(json.dumps(bundle))
        if tamper:
            tamper(changed)
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(changed))
        python = verify_bundle_file(path, trust)
        browser = await browser_verdict(verify_page, path, trust)
        assert browser["ok"] == str(python.ok).lower(), (name, browser["text"], python.summary())
        assert browser["failures"] == str(len(python.failures)), (name, browser["text"], python.summary())
        expected_seq = "" if python.first_bad_seq is None else str(python.first_bad_seq)
        assert browser["firstBadSeq"] == expected_seq, (name, browser["text"], python.summary())
        seen.append((name, python.ok))
        if tamper:
            assert "failed" in await verify_page.locator("#results").inner_text()
    assert [ok for _, ok in seen] == [True] + [False] * (len(CASES) - 1)  # every tampering is caught


async def test_another_organisations_ca_in_the_trust_folder_vouches_for_nobody(
        verify_page: Page, books: tuple[dict[str, Any], Path, Path], tmp_path: Path) -> None:
    bundle, trust, _ = books
    partial = tmp_path / "trust-without-finance"
    partial.mkdir()
    for pem in trust.iterdir():
        if not pem.name.startswith("finance"):
            shutil.copy(pem, partial / pem.name)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    python = verify_bundle_file(path, partial)
    browser = await browser_verdict(verify_page, path, partial)
    assert not python.ok and browser["ok"] == "false"
    assert browser["failures"] == str(len(python.failures)) and browser["firstBadSeq"] == str(python.first_bad_seq)


async def test_an_entry_page_verifies_in_the_browser_and_a_tampered_one_fails(
        page: Page, console_stack: Stack, console_user: UserFactory, make_key) -> None:  # type: ignore[no-untyped-def]
    settings = console_stack.settings
    entries = [{**ledger_sale(n), "entry_key": f"sale:o-{n}:2024-05-01"} for n in range(3)]
    await signed_and_cosigned(console_stack, await make_key("finance"), entries, "browser-audit")
    trust = identity.msp_dir(settings.data_dir)
    await console_user("ada", role="auditor")
    await sign_in(page, console_stack.url("console"), "ada", PASSWORD)

    async def verdict() -> dict[str, str]:
        await page.set_input_files("#trust", trust)
        await page.evaluate("() => { delete document.getElementById('verdict').dataset.ok; }")
        await page.click("#verify-form button[type=submit]")
        await page.wait_for_function("() => document.getElementById('verdict').dataset.ok !== undefined")
        return await page.evaluate("() => ({...document.getElementById('verdict').dataset})")

    await page.goto(f"{console_stack.url('console')}/audit")
    await assert_accessible(page)
    assert (await verdict())["ok"] == "true"
    await page.goto(f"{console_stack.url('console')}/audit/entries/1")
    await assert_accessible(page)
    assert (await verdict())["ok"] == "true"
    assert "verified" in await page.locator("#results").inner_text()
    await screenshot(page, "audit-entry")
    # What a lying server (or a man in the middle) would hand over: the entry changed, its proof not.
    await page.evaluate("() => { const d = document.getElementById('ledger-data');"
                        " d.textContent = d.textContent.replace('o-1', 'o-9'); }")
    tampered = await verdict()
    assert tampered["ok"] == "false" and tampered["firstBadSeq"] == "1"
    assert "failed" in await page.locator("#results").inner_text()


# Entries whose canonical form is easy to get wrong: code-point key order (an astral character sorts
# after U+FFFF, though its UTF-16 code unit sorts before), escapes, control characters, integers past
# 2^53, nesting, and every JSON literal.
AWKWARD = [
    ledger_sale(1),
    {"\uffff": 1, "\U0001f600": 2, "a": 3, "A": 4, "é": 5, "": 6},
    {"text": 'quote " backslash \\ slash / nl \n tab \t cr \r bs \b ff \f nul \x00 us \x1f del \x7f',
     "uni": "€ 𝄞 \u2028 \u2029 ñ", "big": 2**70, "neg": -(2**63), "zero": 0},
    {"nested": {"z": [1, [2, {"y": None, "x": True}], False], "a": {}}, "list": []},
]


async def test_the_browser_encodes_and_hashes_entries_byte_for_byte_as_the_ledger(verify_page: Page) -> None:
    for value in AWKWARD:
        got = await verify_page.evaluate(
            """async (text) => { const v = window.omnistockVerify, bytes = v.canonicalBytes(v.parseJson(text));
                                 return [v.hex(bytes), v.hex(await v.leafHash(bytes))]; }""", json.dumps(value))
        wanted = encoding.canonical_bytes(value)
        assert got == [wanted.hex(), merkle.leaf_hash(wanted).hex()], value


async def test_the_browser_checks_every_proof_of_small_trees_as_rfc_9162_says(verify_page: Page) -> None:
    leaves = [merkle.leaf_hash(encoding.canonical_bytes(ledger_sale(n))) for n in range(9)]

    def get_node(level: int, index: int) -> bytes:
        return merkle.root(leaves[index << level:(index + 1) << level])

    cases = []
    for size in range(1, len(leaves) + 1):
        root = merkle.root(leaves[:size]).hex()
        for index in range(size):
            proof = [p.hex() for p in merkle.inclusion_proof(index, size, get_node)]
            cases.append(["inclusion", leaves[index].hex(), index, size, proof, root])
        for first in range(1, size):
            proof = [p.hex() for p in merkle.consistency_proof(first, size, get_node)]
            cases.append(["consistency", merkle.root(leaves[:first]).hex(), first, size, proof, root])
    verdicts = await verify_page.evaluate(
        """async (cases) => { const v = window.omnistockVerify, h = v.fromHex, out = [];
             const run = (kind, a, i, n, proof, root) => kind === "inclusion"
               ? v.verifyInclusion(h(a), BigInt(i), BigInt(n), proof.map(h), h(root))
               : v.verifyConsistency(BigInt(i), BigInt(n), proof.map(h), h(a), h(root));
             for (const [kind, a, i, n, proof, root] of cases) {
               const flip = (p) => p.replace(/^./, (c) => c === "0" ? "1" : "0");
               const flipped = proof.length ? [flip(proof[0]), ...proof.slice(1)] : null;
               out.push([await run(kind, a, i, n, proof, root), flipped && await run(kind, a, i, n, flipped, root),
                         await run(kind, a, i, n + 1, proof, root)]);
             }
             return out; }""", cases)
    for case, (honest, flipped, wrong_size) in zip(cases, verdicts, strict=True):
        kind, _, i, n, proof, root = case
        assert honest, case
        assert flipped in (False, None), case  # a changed sibling hash never proves anything
        if kind == "inclusion":
            assert wrong_size == merkle.verify_inclusion(bytes.fromhex(case[1]), i, n + 1,
                                                         [bytes.fromhex(p) for p in proof], bytes.fromhex(root))
        else:
            assert wrong_size == merkle.verify_consistency(i, n + 1, [bytes.fromhex(p) for p in proof],
                                                           bytes.fromhex(case[1]), bytes.fromhex(root))
