"""The ledger on Hyperledger Fabric 2.5: the network (network.py), the chaincode and the Gateway backend."""
