"""Reliability drills and the soak: what the system survives, shown against a real stack.

    kill9       kill -9 the services in the middle of order traffic, restart them, check every promise
    pg_restart  restart PostgreSQL under traffic; the services recover by themselves, nothing hangs
    soak        the mixed order load for minutes while each service's RSS is sampled

The same drill code runs small in `make test` (tests/drills/) and large in `make drill`
(`python -m benchmarks.drills`); `make soak` runs `python -m benchmarks.drills.soak`.
"""
