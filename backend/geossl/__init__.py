"""GeoSSL backend: self-supervised pretraining, few-label fine-tuning and tiled inference.

Reading order: ``cli.py`` (the commands) → ``raster_io`` / ``labels`` / ``sampling`` (data) →
``models`` → ``finetune`` → ``tiling`` (prediction) → ``metrics`` → ``checkpoint``.
"""

__version__ = "0.1.0"
