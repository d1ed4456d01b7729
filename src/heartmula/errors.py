"""The one exception type for problems a user can cause and fix."""


class HeartMuLaError(Exception):
    """Bad input, a wrong folder, a request that cannot be served. The message says what to do."""


def check_at_least(name: str, value: int, minimum: int = 1) -> None:
    """Refuse a count below `minimum`, naming the setting as the user gave it (e.g. `--workers`)."""
    if value < minimum:
        raise HeartMuLaError(f"{name} must be >= {minimum}, got {value}")
