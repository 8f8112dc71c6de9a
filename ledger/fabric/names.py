"""The Fabric network's names, shared by the network, the chaincode, the Gateway backend and compose.

Changing one of these changes the channel's configuration: a network made with the old names has to be
made again (`omnistock ledger fabric down --purge`, then `up`).
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "omnistock.local"
ORDERER_MSP = "OrdererMSP"
RETAILER_MSP = "RetailerMSP"
AUDIT_MSP = "AuditMSP"
CHANNEL = "omnistock-ledger"
CHAINCODE_NAME = "omnistock-ledger"
CHAINCODE_VERSION = "1.0"
CHAINCODE_LABEL = f"{CHAINCODE_NAME}_{CHAINCODE_VERSION}"
CHAINCODE_SEQUENCE = 1
# Both organisations' peers endorse every append: neither the retailer nor the audit firm alone can
# write what the other did not also compute.
DEFAULT_ENDORSEMENT_POLICY = f"AND('{RETAILER_MSP}.peer','{AUDIT_MSP}.peer')"
# The package type our own external builder (ledger/fabric/builder) accepts: chaincode-as-a-service.
PACKAGE_TYPE = "ccaas"


@dataclass(frozen=True)
class Org:
    key: str  # short name: folders, pid files, the CLI
    msp_id: str
    domain: str
    offset: int  # this org's ports start at the network's base port + offset

    @property
    def peer_host(self) -> str:
        return f"peer0.{self.domain}"

    @property
    def compose_service(self) -> str:
        return f"fabric-peer-{self.key}"


RETAILER = Org("retailer", RETAILER_MSP, f"retailer.{DOMAIN}", 1)
AUDIT = Org("audit", AUDIT_MSP, f"audit.{DOMAIN}", 11)
PEER_ORGS: tuple[Org, ...] = (RETAILER, AUDIT)
ORDERER_DOMAIN = f"orderer.{DOMAIN}"
ORDERER_HOST = f"orderer0.{ORDERER_DOMAIN}"
ORDERER_COMPOSE_SERVICE = "fabric-orderer"


@dataclass(frozen=True)
class Ports:
    """Every port of the network, as fixed offsets from one base (setting `fabric_port_base`), so one
    setting moves the whole network and two networks never share a port if their bases are 30 apart."""

    base: int

    @property
    def orderer(self) -> int:
        return self.base

    @property
    def orderer_admin(self) -> int:  # channel participation API (osnadmin)
        return self.base + 3

    @property
    def orderer_operations(self) -> int:
        return self.base + 4

    def peer(self, org: Org) -> int:  # peer gRPC: endorsement, deliver, the Gateway service
        return self.base + org.offset

    def peer_chaincode(self, org: Org) -> int:  # the peer's own chaincode listener (unused by ccaas)
        return self.base + org.offset + 1

    def chaincode(self, org: Org) -> int:  # the org's chaincode server, which its peer dials
        return self.base + org.offset + 4

    def peer_operations(self, org: Org) -> int:  # /healthz, /metrics
        return self.base + org.offset + 5

    def all(self) -> list[int]:
        ports = [self.orderer, self.orderer_admin, self.orderer_operations]
        for org in PEER_ORGS:
            ports += [self.peer(org), self.peer_chaincode(org), self.chaincode(org), self.peer_operations(org)]
        return ports
