from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger import identity


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised identity set for tests that only read it (key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("omnistock-data")
    identity.init_identities(directory, now=datetime(2024, 1, 1, tzinfo=UTC))
    return directory


@pytest.fixture(scope="session")
def trust(data_dir: Path) -> identity.TrustStore:
    return identity.TrustStore.from_dir(identity.msp_dir(data_dir))
