"""The Fabric network's failures, in the one error hierarchy (shared/errors.py)."""

from __future__ import annotations

from shared.errors import ServiceUnavailable


class FabricNetworkError(ServiceUnavailable):
    code = "fabric-network"
    title = "The Fabric network is not available"
