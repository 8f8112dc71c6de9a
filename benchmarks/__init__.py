"""The benchmark suite: `python -m benchmarks [--quick] [--scenario NAME ...]`.

It starts a fresh stack (durable embedded PostgreSQL + each service as its own process), measures the
limits of the machine in the same run (pgbench, SHA-256), drives every scenario from separate client
processes and writes the figures to benchmarks/results/ and benchmarks/RESULTS.md.
"""
