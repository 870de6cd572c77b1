"""The package version (a leaf module: inner modules import it from here, not from the package root)."""

__version__ = "0.1.0"
