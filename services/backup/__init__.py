"""`omnistock backup DIR` and `omnistock restore DIR`: the database and the ledger's trust material.

A backup directory (0700) holds:

    manifest.json   written last (so a directory without one is an unfinished backup): omnistock's
                    version, the migrations applied, the time (UTC), the server's and pg_dump's versions,
                    and the size, mode and SHA-256 of every other file
    db/             pg_dump's directory format (one snapshot; gzip; dumped with -j in parallel)
    ledger/         <data_dir>/ledger as it was: the msp folders (certificates, member keys 0600,
                    revoked.json), without the offline CA folder (CA private keys stay offline)

Not in it: the embedded cluster's secrets file (<data_dir>/pg/omnistock-secrets.json). It holds the
passwords of a cluster, not data: a restore into a fresh data directory starts a new cluster whose
superuser and service roles get new random passwords; a restore into an existing cluster keeps its own.
API keys are rows (hashed) and come back with the database.

Rooms: manifest.py (the manifest and the checks on it, no database), repository.py (all SQL),
pg_tools.py (pg_dump, pg_restore and psql as subprocesses), ledger_files.py (copying the trust
material), use_cases.py (backup and restore, step by step).
"""
