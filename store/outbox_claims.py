"""Claiming outbox rows: the head of each thread, no lane past its room, card updates coalesced.

A thread's rows go out in order, except that its card updates and its posts are two sequences
that do not wait for each other (both wait for the card itself). A lane is a channel's new
posts, or its card updates: delivery paces each on its own budget, so
the claim keeps each lane's share of what a worker holds bounded, and a channel with a backlog
leaves the rest of the claim to the others. The statements are built once, with bound
parameters, so a claim costs its execution only; each reads the open rows' partial index.
"""

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.outbox import OutboxKind, OutboxRow, OutboxState
from store.outbox import DELIVERED, in_states, is_open, outbox_from_row
from store.schema import outbox, tasks

#: A lane as the claim sees it: ``(channel_id, updates)``, a channel's new posts (False) or its
#: card updates (True). ``bot.delivery.Lane`` is the same pair, named.
LaneKey = tuple[str, bool]


async def claim_outbox(
    db: AsyncConnection,
    worker: str,
    now: datetime,
    limit: int,
    per_lane: int | None = None,
    held: Mapping[LaneKey, int] | None = None,
) -> list[OutboxRow]:
    """Claims up to ``limit`` rows, each the oldest open row of its sequence in its task's
    thread (the card, then its posts and its card updates, see ``_holds_up``), oldest first.

    A row is claimable when it is due and pending. A row stays in flight for as long as its
    worker is alive; the takeover (``store.workers``) reopens the rows of a worker presumed dead
    as uncertain. Dead, dropped and delivered rows are passed over, so they never hold up a
    thread.

    No lane (a channel's posts, or its card updates) ends up holding more than ``per_lane``
    rows, counting the ``held`` ones the worker has already: a full lane is passed over, so a
    channel with a backlog leaves the rest of the claim to the other channels. A claimed card
    update also settles the later pending card updates of its card (see ``_coalesce``).
    PostgreSQL workers skip rows another worker has locked; SQLite has one writer at a time.
    """
    per_lane = limit if per_lane is None else per_lane
    room = {lane: per_lane - count for lane, count in (held or {}).items() if count > 0}
    full = [lane for lane, left in room.items() if left <= 0]
    # Rows past a partly held lane's room are dropped below: fetch enough to make up for them.
    spare = sum(per_lane - left for left in room.values() if left > 0)
    ranked = await db.execute(
        CLAIM_CANDIDATES, candidate_params(now, per_lane, full, limit + spare)
    )
    chosen = [
        row for row in ranked if row.rank <= room.get((row.channel_id, bool(row.updates)), per_lane)
    ][:limit]
    if not chosen:
        return []
    taken = await db.execute(_CLAIM, {"worker": worker, "ids": [c.id for c in chosen]})
    claimed = [outbox_from_row(row) for row in taken]
    coalescing = {c.id for c in chosen if c.coalesces}
    rows = [await _coalesce(db, row, now) if row.id in coalescing else row for row in claimed]
    return sorted(rows, key=lambda row: row.id)


def _is_card_update(table: FromClause) -> ColumnElement[bool]:
    return table.c.kind == literal_column(f"'{OutboxKind.CARD_UPDATE.value}'")


def _is_card_post(table: FromClause) -> ColumnElement[bool]:
    return table.c.kind == literal_column(f"'{OutboxKind.CARD_POST.value}'")


def _holds_up(earlier: FromClause, row: FromClause) -> ColumnElement[bool]:
    """Whether an open ``earlier`` row of a thread holds up ``row``: the card post holds up
    everything; otherwise a thread is two sequences, its posts and its card updates, each in
    order, neither waiting for the other (a card update renders the task's state when it is
    sent, so a post never needs to wait for one, nor one for a post)."""
    earlier_update, row_update = _is_card_update(earlier), _is_card_update(row)
    return _is_card_post(earlier) | (earlier_update & row_update) | (~earlier_update & ~row_update)


def _claim_candidates() -> Select[Any]:
    """The claimable rows, ranked within their lane, at most ``per_lane`` of each, oldest first,
    each saying whether it is a card update with later ones of its card to settle. Rows of the
    lanes in ``full_posts`` (channels) and ``full_updates`` are passed over.

    Built once, with bound parameters, so that each claim costs its execution only. The window
    function stays in a subquery, without a lock: PostgreSQL allows no ``FOR UPDATE`` beside
    one, so the rows are locked when they are claimed (``_CLAIM``)."""
    earlier = outbox.alias("earlier")
    has_earlier_open = (
        select(earlier.c.id)
        .where(
            earlier.c.task_id == outbox.c.task_id,
            earlier.c.id < outbox.c.id,
            is_open(earlier),
            _holds_up(earlier, outbox),
        )
        .exists()
    )
    updates = _is_card_update(outbox)
    channel = tasks.c.channel_id
    ranked = (
        select(
            outbox.c.id,
            outbox.c.task_id,
            channel,
            updates.label("updates"),
            func.row_number()
            .over(partition_by=(channel, updates), order_by=outbox.c.id)
            .label("rank"),
        )
        .select_from(outbox.join(tasks, tasks.c.id == outbox.c.task_id))
        .where(
            is_open(outbox),  # as the partial index says, so SQLite's planner can use it
            outbox.c.state == OutboxState.PENDING.value,
            outbox.c.available_at <= bindparam("now"),
            ~has_earlier_open,
            ~(channel.in_(bindparam("full_posts", expanding=True)) & ~updates),
            ~(channel.in_(bindparam("full_updates", expanding=True)) & updates),
        )
        .subquery("ranked")
    )
    return (
        select(ranked, (ranked.c.updates & _has_later_update(ranked)).label("coalesces"))
        .where(ranked.c.rank <= bindparam("per_lane"))
        .order_by(ranked.c.id)
        .limit(bindparam("limit"))
    )


def candidate_params(
    now: datetime, per_lane: int, full: Collection[LaneKey], limit: int
) -> dict[str, Any]:
    """``CLAIM_CANDIDATES``' parameters."""
    return {
        "now": now,
        "per_lane": per_lane,
        "limit": limit,
        "full_posts": sorted(channel for channel, updates in full if not updates),
        "full_updates": sorted(channel for channel, updates in full if updates),
    }


def _has_later_update(ranked: FromClause) -> ColumnElement[bool]:
    """Whether a later card update of the row's card is pending (``_coalesce`` settles it)."""
    later = outbox.alias("later")
    return (
        select(later.c.id)
        .where(
            later.c.task_id == ranked.c.task_id,
            later.c.id > ranked.c.id,
            is_open(later),
            later.c.state == OutboxState.PENDING.value,
            _is_card_update(later),
        )
        .exists()
    )


def _claim() -> Any:
    """Takes the rows ``ids`` that are still pending; on PostgreSQL, skips any another worker
    has locked meanwhile (and one it claimed since is no longer pending when rechecked)."""
    claimable = outbox.alias("claimable")
    still_pending = select(claimable.c.id).where(
        claimable.c.id.in_(bindparam("ids", expanding=True)),
        in_states(claimable, [OutboxState.PENDING]),
    )
    return (
        update(outbox)
        .where(outbox.c.id.in_(still_pending.with_for_update(skip_locked=True)))
        .values(
            state=OutboxState.IN_FLIGHT.value,
            claimed_by=bindparam("worker"),
            claim_expires_at=None,
            attempts=outbox.c.attempts + 1,
        )
        .returning(*outbox.c)
    )


def _later_updates() -> Any:
    """Settles the pending card updates of task ``of_task`` after row ``after`` as delivered."""
    return (
        update(outbox)
        .where(
            outbox.c.task_id == bindparam("of_task"),
            is_open(outbox),  # the partial index on (task_id, id)
            outbox.c.state == OutboxState.PENDING.value,
            _is_card_update(outbox),
            outbox.c.id > bindparam("after"),
        )
        .values(
            state=DELIVERED,
            delivered_at=bindparam("at", type_=outbox.c.delivered_at.type),
            result=bindparam("settled_as", type_=outbox.c.result.type),
            claim_expires_at=None,
        )
        .returning(outbox.c.id)
    )


def _next_in_thread() -> Select[Any]:
    """The first open row of task ``of_task`` after row ``after`` that ``after`` held up: the
    head of its sequence once that row is settled (the rows before it that could hold it up
    are settled already, as ``after`` was claimable)."""
    settled = outbox.alias("settled")
    return (
        select(
            outbox.c.id,
            outbox.c.kind,
            outbox.c.state,
            outbox.c.available_at,
            tasks.c.channel_id,
            (_is_card_update(outbox) & _has_later_update(outbox)).label("coalesces"),
        )
        .select_from(outbox.join(tasks, tasks.c.id == outbox.c.task_id))
        .where(
            outbox.c.task_id == bindparam("of_task"),
            outbox.c.id > bindparam("after"),
            is_open(outbox),
            select(settled.c.id)
            .where(settled.c.id == bindparam("after"), _holds_up(settled, outbox))
            .exists(),
        )
        .order_by(outbox.c.id)
        .limit(1)
    )


def _older_waiting(updates: bool) -> Select[Any]:
    """A pending, due row of another thread, older than row ``row``, in ``row``'s lane (the
    posts of channel ``channel``, or with ``updates`` its card updates)."""
    other, its_task = outbox.alias("other"), tasks.alias("its_task")
    same_lane = _is_card_update(other) if updates else ~_is_card_update(other)
    return (
        select(other.c.id)
        .select_from(other.join(its_task, its_task.c.id == other.c.task_id))
        .where(
            in_states(other, [OutboxState.PENDING]),
            its_task.c.channel_id == bindparam("channel"),
            other.c.id < bindparam("row"),
            other.c.task_id != bindparam("of_task"),
            other.c.available_at <= bindparam("now"),
            same_lane,
        )
        .limit(1)
    )


CLAIM_CANDIDATES = _claim_candidates()
_CLAIM = _claim()
_LATER_UPDATES = _later_updates()
_NEXT_IN_THREAD = _next_in_thread()
_OLDER_WAITING = {False: _older_waiting(False)}


async def _coalesce(db: AsyncConnection, row: OutboxRow, now: datetime) -> OutboxRow:
    """Settles the later pending card updates of ``row``'s card as delivered into ``row``.

    A card update renders the card from its task's state at delivery time, which comes after
    this claim commits: it shows every change committed before, so the later rows of those
    changes would only repeat it. A change committed after the claim still gets its own row.
    """
    into = {"coalesced_into": row.id}
    params = {"of_task": row.task_id, "after": row.id, "at": now, "settled_as": into}
    coalesced = sorted((await db.execute(_LATER_UPDATES, params)).scalars())
    return replace(row, coalesced=tuple(coalesced)) if coalesced else row


async def claim_next(
    db: AsyncConnection,
    worker: str,
    task_id: int,
    after: int,
    now: datetime,
    per_lane: int,
    held: Mapping[LaneKey, int],
) -> OutboxRow | None:
    """Claims the next open row of task ``task_id``'s thread, once row ``after`` before it is
    settled in this transaction: when it is pending, due, and its lane holds fewer than
    ``per_lane`` of ``held`` (which no longer counts row ``after``). A claimed card update
    settles the later ones of its card, as in ``claim_outbox``.

    A post is left to the next claim, which takes the oldest first, when an older post of
    another thread waits in the same lane: otherwise a busy thread would keep its lane to
    itself, and rows handed back by a dead worker could wait behind newer ones for minutes.
    """
    found = (await db.execute(_NEXT_IN_THREAD, {"of_task": task_id, "after": after})).one_or_none()
    if found is None or found.state != OutboxState.PENDING.value or found.available_at > now:
        return None
    updates = found.kind == OutboxKind.CARD_UPDATE.value
    if held.get((found.channel_id, updates), 0) >= per_lane:
        return None
    lane = {"channel": found.channel_id, "row": found.id, "of_task": task_id, "now": now}
    # Posts only: a card update claimed at once settles the later ones of its card, and paced
    # for the whole workspace it is better sent as soon as its turn comes than claimed early.
    if not updates and (await db.execute(_OLDER_WAITING[False], lane)).first() is not None:
        return None
    taken = [
        outbox_from_row(row)
        for row in await db.execute(_CLAIM, {"worker": worker, "ids": [found.id]})
    ]
    if not taken:
        return None
    return await _coalesce(db, taken[0], now) if found.coalesces else taken[0]
