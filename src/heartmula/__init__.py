"""heartmula: an open toolkit for music foundation models (HeartMuLa family)."""

from heartmula.errors import HeartMuLaError

__version__ = "0.1.0"
__all__ = ["HeartMuLaError", "HeartMuLaPipeline", "Song", "__version__"]


def __getattr__(name: str):
    # The pipeline imports torch: loaded on first use, so that `import heartmula` and `heartmula --help` stay light.
    if name in ("HeartMuLaPipeline", "Song"):
        from heartmula import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'heartmula' has no attribute {name!r}")
