"""Shared pytest configuration for the backend and plugin suites."""


def pytest_configure(config):
    # rasterio/affine's own use of the `*` operator; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:Use `@` matmul:PendingDeprecationWarning")
