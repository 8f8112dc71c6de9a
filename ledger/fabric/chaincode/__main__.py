"""`python -m ledger.fabric.chaincode`: the ledger chaincode as a service (Fabric's ccaas builder).

The peer connects to CHAINCODE_SERVER_ADDRESS and names the package by CHAINCODE_ID, the variables
Fabric's chaincode-as-a-service convention uses; with CHAINCODE_TLS_KEY and CHAINCODE_TLS_CERT (file
paths) the server speaks TLS, and with CHAINCODE_CLIENT_CA_CERT it requires the peer's client
certificate. What the rules need comes from the one settings object: the trust directory of our
organisations (OMNISTOCK_DATA_DIR/ledger/msp, re-read when it changes), the MSP -> organisation map
and the allowed clock skew.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.fabric.chaincode.contract import ContractConfig, LedgerContract
from ledger.identity import TrustCache, msp_dir
from shared.settings import Settings


class ChaincodeServer(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAINCODE_", extra="ignore")

    id: str
    server_address: str
    tls_key: Path | None = None
    tls_cert: Path | None = None
    client_ca_cert: Path | None = None


def contract_for(settings: Settings) -> LedgerContract:
    trust = TrustCache(msp_dir(settings.data_dir))
    return LedgerContract(ContractConfig(
        trust=trust.current,
        msp_orgs={msp: frozenset(orgs) for msp, orgs in settings.fabric_msp_orgs.items()},
        max_clock_skew_s=settings.ledger_max_clock_skew_s))


def main() -> None:
    server = ChaincodeServer()  # type: ignore[call-arg]  # read from the environment
    settings = Settings()
    from ledger.fabric.chaincode.server import serve
    from ledger.fabric.chaincode.shim import LedgerChaincode

    # The shim logs every message it passes at INFO and WARNING through the "asyncio" logger; a peer's
    # traffic would drown the log.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    tls = server.tls_key is not None and server.tls_cert is not None
    asyncio.run(serve(
        LedgerChaincode(contract_for(settings)), server.id, server.server_address,
        key=server.tls_key.read_bytes() if tls and server.tls_key else None,
        cert=server.tls_cert.read_bytes() if tls and server.tls_cert else None,
        client_ca=server.client_ca_cert.read_bytes() if tls and server.client_ca_cert else None))


if __name__ == "__main__":
    main()
