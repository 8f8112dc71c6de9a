"""The permissioned ledger of omnistock.

Pure core (no database, no HTTP): canonical entry encoding, RFC 9162 Merkle tree and proofs,
Fabric-MSP-like X.509 identities, signed statements, append/read policy, and the offline verifier
an auditor runs on an exported bundle. Storage backends and the HTTP service build on these.
"""
