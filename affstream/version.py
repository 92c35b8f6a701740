"""The package version, in one place (read by the wheel, the CLI and the JSON report)."""

__version__ = "0.1.0"
