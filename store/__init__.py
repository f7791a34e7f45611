"""Durable storage on SQLAlchemy 2.x: schema, repositories and Alembic migrations."""
