"""`omnistock ledger ...` run as a real process, the way auditors and operators run it."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg

from ledger import identity
from ledger.bundle import dump_bundle
from shared.settings import Settings
from tests.ledger.conftest import append, cosign, ledger_port, sale, summary
from tests.test_cli import cli_env, run_cli


async def _fill(settings: Settings) -> None:
    async with ledger_port(settings, 2) as backend:
        finance = identity.load_identity(settings.data_dir, "finance")
        for b in range(3):
            await append(backend, [summary()] + [sale(b * 10 + i) for i in range(1, 10)], finance)
            await backend.cut_checkpoint()
            await cosign(backend, finance, settings)


def test_init_creates_identities_with_private_keys_readable_only_by_the_owner(tmp_path: Path) -> None:
    env = cli_env(tmp_path, None)
    result = run_cli("ledger", "init", env=env)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    for org in identity.ORGS:
        assert f"  {org} " in result.stdout
        for key in (identity.key_dir(data, org) / "member.key", identity.offline_ca_dir(data) / org / "ca.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    # The trust directory every service and auditor reads holds no private key at all.
    assert not list(identity.msp_dir(data).rglob("*.key"))
    again = run_cli("ledger", "init", env=env)
    assert again.stdout == result.stdout  # kept as they were


async def test_verify_passes_an_export_and_fails_a_flipped_byte_naming_the_seq(
        ledger_settings: Settings, tmp_path: Path) -> None:
    await _fill(ledger_settings)
    async with ledger_port(ledger_settings, 2) as backend:
        raw = dump_bundle(await backend.export(5, 25, since=10))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(raw)
    position = raw.index(b'"o-17"') + 3
    bad.write_bytes(raw[:position] + bytes([raw[position] ^ 2]) + raw[position + 1:])
    trust = tmp_path / "trust"  # what an auditor gets: the certificates, no keys
    for pem in identity.msp_dir(ledger_settings.data_dir).rglob("*.pem"):
        (trust / pem.parent.name).mkdir(parents=True, exist_ok=True)
        (trust / pem.parent.name / pem.name).write_bytes(pem.read_bytes())
    env = cli_env(tmp_path / "elsewhere", None)
    ok = run_cli("ledger", "verify", str(good), "--trust", str(trust), env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 21 entries"), ok.stdout + ok.stderr
    failed = run_cli("ledger", "verify", str(bad), "--trust", str(trust), env=env)
    assert failed.returncode == 1
    assert "first bad seq: 17" in failed.stderr


async def test_audit_passes_an_honest_log_and_names_the_first_tampered_seq(
        ledger_settings: Settings, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    await _fill(ledger_settings)
    env = cli_env(tmp_path, database_env)
    env["OMNISTOCK_DATA_DIR"] = str(ledger_settings.data_dir)
    ok = run_cli("ledger", "audit", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: 30 entries, 3 batches, tree size 30")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("DELETE FROM ledger.entries WHERE seq = 22")
    finally:
        await conn.close()
    failed = run_cli("ledger", "audit", env=env)
    assert failed.returncode == 1
    assert "first bad seq: 22" in failed.stderr and "seq 22: entry is missing" in failed.stderr


async def test_a_revoked_member_certificate_fails_the_audit_of_what_it_signed(
        ledger_settings: Settings, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    await _fill(ledger_settings)
    env = cli_env(tmp_path, database_env)
    env["OMNISTOCK_DATA_DIR"] = str(ledger_settings.data_dir)
    old_serial = identity.load_identity(ledger_settings.data_dir, "finance").cert.serial_number
    assert run_cli("ledger", "rotate", "--org", "finance", env=env).returncode == 2  # --ca-dir is required
    ca_dir = identity.offline_ca_dir(ledger_settings.data_dir)
    rotated = run_cli("ledger", "rotate", "--org", "finance", "--ca-dir", str(ca_dir), env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert identity.load_identity(ledger_settings.data_dir, "finance").cert.serial_number != old_serial
    assert run_cli("ledger", "audit", env=env).returncode == 0  # rotation keeps old entries verifiable
    revoked = run_cli("ledger", "revoke", "--org", "finance", "--serial", f"{old_serial:x}", env=env)
    assert revoked.returncode == 0, revoked.stderr
    failed = run_cli("ledger", "audit", env=env)
    assert failed.returncode == 1 and "first bad seq: 0" in failed.stderr and "revoked" in failed.stderr
