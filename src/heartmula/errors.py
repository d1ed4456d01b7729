"""The one exception type for problems a user can cause and fix."""


class HeartMuLaError(Exception):
    """Bad input, a wrong folder, a request that cannot be served. The message says what to do."""
