"""The ledger on Hyperledger Fabric 2.5: the same port (ledger.port.Ledger), run by several organisations.

network    a local network from Fabric's release binaries (with names, layout, netconfig, builder/)
chaincode  the rules every endorsing peer runs, as a chaincode service (python -m ledger.fabric.chaincode)
protocol   Fabric's transaction messages built and read with the official protobufs; endorsements
gateway    a client of the peer's Gateway service (Endorse, Submit, CommitStatus, Evaluate)
backend    the port over the Gateway: appends batched per transaction, checkpoints endorsed by both orgs
"""
