"""Shared test set-up. Fixtures that start real servers live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.seaweed",
    "tests.fixtures.postgres",
    "tests.fixtures.node",
    "tests.fixtures.dcmtk",
    "tests.fixtures.browser",
    "tests.fixtures.cluster",
]
