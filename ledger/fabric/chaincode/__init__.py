"""The ledger's chaincode for Hyperledger Fabric, run as a service (`python -m ledger.fabric.chaincode`).

state     the world-state layout: head, signed batches, the entry_key index, tree tiles, checkpoints
contract  the rules every endorsing peer runs (shared with the embedded backend where they are the same)
shim      fabric-chaincode-python's Chaincode and stub in front of the contract
"""
