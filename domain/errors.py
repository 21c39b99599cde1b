"""Errors of the domain layer: one root, classified by whether a retry can help."""

from __future__ import annotations


class DomainError(Exception):
    """Root of every error the domain raises on purpose."""


class TransientError(DomainError):
    """A fault a later attempt may not meet (a provider timeout, a 5xx)."""


class PermanentError(DomainError):
    """A fault no retry will fix (a 4xx from a provider, invalid data)."""


class UnknownJob(DomainError):
    """A job name that the registry does not hold."""
