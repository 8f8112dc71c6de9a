"""Store inventory: locations, SKUs, stock levels, movements, nearby-stock search, stock events."""
