"""Processing provider and algorithms (fine-tune, segment, evaluate, pretrain) over the blocking client."""

from .provider import GeoSSLProvider

__all__ = ["GeoSSLProvider"]
