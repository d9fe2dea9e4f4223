"""stackbox: an OpenStack-compatible private cloud in one Python codebase."""

__version__ = "0.1.0"
