"""Errors of the store layer."""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is locked: nothing was written; try again later."""


class LeaseLost(StoreError):
    """The run's lease was taken over by another attempt: this attempt's work was rolled back."""
