"""The one error a configuration raises: a leaf module, so that every part of core can raise it
without importing the tunnel parameters (core.params) that use those parts."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration a person gave us cannot be used; the message says why and what is accepted."""
