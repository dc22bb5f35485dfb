"""The GeoSSL dock widget and its sections."""

from .dock import GeoSSLDock

__all__ = ["GeoSSLDock"]
