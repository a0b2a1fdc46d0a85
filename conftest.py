"""Repository-wide pytest configuration: where the shared real material lives.

The fbsd-hil pytest plugin itself (options such as --fbsd-image, the `hil` skip rule) is
registered through the package's ``pytest11`` entry point, so it also works for users who
install fbsd-hil into their own test suites.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# pytester drives the plugin tests in tests/plugin; pytest only accepts this in the rootdir conftest.
pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parent
TESTS_DATA = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tests_data() -> Path:
    return TESTS_DATA
