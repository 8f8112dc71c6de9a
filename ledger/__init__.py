"""The permissioned ledger of omnistock.

Pure core (no database, no HTTP), one job per module:

    encoding  canonical entry bytes (sorted-key compact UTF-8 JSON, no floats) and timestamps
    merkle    RFC 9162 tree: leaf/node hashes, Frontier (O(log n) appends), proofs, verifiers
    identity  Fabric-MSP-like orgs: CA + member certificates, rotation, revocation, TrustStore
    signing   ECDSA P-256 signatures over batch and checkpoint statements
    policy    which org appends which entry kinds, which role reads what
    bundle    writes export bundles
    verify    the offline verifier of export bundles (an auditor reads only this and what it imports)

Storage backends and the HTTP service build on these.
"""
