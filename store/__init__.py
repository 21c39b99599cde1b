"""Persistence: SQLAlchemy models, migrations and the implementations of the domain's ports."""
