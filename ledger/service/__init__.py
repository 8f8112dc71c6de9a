"""The ledger HTTP service (port 8085): routes over the port, policy in the use cases."""
