"""vramtop: a live GPU-memory monitor for people who train models."""

__version__ = "0.1.0"
