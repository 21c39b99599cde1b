"""Scheduling: periodiq fires every job of the registry through the dispatch API."""
