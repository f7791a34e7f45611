"""Column types that keep Python values honest across SQLite and PostgreSQL."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, String
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware UTC datetimes and returns them aware, on every backend.

    SQLite has no time zones, so values are written there as naive UTC text,
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's own SQLite format, so stored values compare as
    strings in time order), formatted and parsed here with the C ``isoformat`` and
    ``fromisoformat``, which bulk writes and reads of many rows feel. Naive datetimes are
    refused on the way in so local time never sneaks in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True
    #: The last SQLite value written, as (datetime, text): a batch writes the same ``now`` into
    #: every row, and formatting it once instead of per row shows in a reconcile of 10k tasks.
    _last_text: tuple[datetime | None, str] = (None, "")

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if dialect.name != "sqlite":
            return value
        last = self._last_text  # one read of a tuple: safe if threads share the type
        if last[0] is value:
            return last[1]
        formatted = value.replace(tzinfo=None).isoformat(" ", "microseconds")
        self._last_text = (value, formatted)
        return formatted

    def process_result_value(
        self, value: datetime | str | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
