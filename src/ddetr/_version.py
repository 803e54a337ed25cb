"""The package version (one place: pyproject.toml keeps the same string)."""

__version__ = "0.1.0"
