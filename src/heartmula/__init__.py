"""heartmula: an open toolkit for music foundation models (HeartMuLa family)."""

from heartmula.errors import HeartMuLaError

__version__ = "0.1.0"
__all__ = ["HeartMuLaError", "__version__"]
