"""The permissioned ledger of omnistock.

Pure core (no database, no HTTP), one job per module:

    encoding  canonical entry bytes (sorted-key compact UTF-8 JSON, no floats) and timestamps
    merkle    RFC 9162 tree: leaf/node hashes, Frontier (O(log n) appends), proofs, verifiers
    identity  Fabric-MSP-like orgs: CA + member certificates, rotation, revocation, TrustStore; where
              each key lives (certificates, per-org member keys, offline CA keys)
    signing   ECDSA P-256 signatures over submission, batch and checkpoint statements, and their checks
    submit    the submitter's side of an append: sign where it runs, sign again when overtaken
    cosign    a co-signature of the newest checkpoint, after checking it extends the last one co-signed
    policy    which org appends which entry kinds, which role reads what (and which MSP acts for which org)
    entries   what a well-formed append is and what entry keys already in the log mean (every backend)
    bundle    writes export bundles
    verify    the offline verifier of export bundles (an auditor reads only this and what it imports)

Storage backends (postgres/: the embedded default; fabric/: Hyperledger Fabric, the chaincode and the
Gateway client) and the HTTP service build on these.
"""
