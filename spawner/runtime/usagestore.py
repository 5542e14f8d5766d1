"""The GPU-hours records in the hub's own database (sqlite by default, PostgreSQL when the
hub's ``db_url`` names one), with SQLAlchemy Core: three tables of this package next to
JupyterHub's, made on first use, never touching JupyterHub's own.

- ``gpuws_usage``: one row per GPU allocation (:class:`~spawner.core.usage.UsageRecord`),
  keyed by container id and Docker's ``StartedAt``, so writing what Docker says twice (a hub
  restart, two passes) changes nothing; ``last_seen`` is when the hub last saw it running.
- ``gpuws_usage_summary``: records older than the retention, per day, groups, profile and
  model, without user names (:func:`~spawner.core.usage.summarise`).
- ``gpuws_usage_user_total``: the GPU-seconds of each user's summarised records, so the
  per-user counter of ``/hub/metrics`` never goes down.

Calls block (the database may be across the network): the hub runs them in one thread of
their own (:meth:`UsageStore.run`). One store per database URL, owned by the hub runtime.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa

from spawner.core.usage import Piece, UsageRecord

T = TypeVar("T")

metadata = sa.MetaData()
USAGE = sa.Table(
    "gpuws_usage",
    metadata,
    sa.Column("key", sa.String(160), primary_key=True),
    sa.Column("container_id", sa.String(80), nullable=False, index=True),
    sa.Column("user_name", sa.String(255), nullable=False, index=True),
    sa.Column("server_name", sa.String(255), nullable=False),
    sa.Column("groups", sa.Text, nullable=False),  # JSON list
    sa.Column("profile", sa.String(255), nullable=False),
    sa.Column("gpu_ids", sa.Text, nullable=False),  # JSON list
    sa.Column("gpus", sa.Integer, nullable=False),  # how many: the totals are summed in SQL
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("started", sa.Float, nullable=False, index=True),
    sa.Column("ended", sa.Float, nullable=True, index=True),
    sa.Column("last_seen", sa.Float, nullable=False),
)
SUMMARY = sa.Table(
    "gpuws_usage_summary",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("groups", sa.String(1024), primary_key=True),
    sa.Column("profile", sa.String(255), primary_key=True),
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
)
USER_TOTAL = sa.Table(
    "gpuws_usage_user_total",
    metadata,
    sa.Column("user_name", sa.String(255), primary_key=True),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
)


def _record(row: Any) -> UsageRecord:
    return UsageRecord(
        key=row.key,
        container_id=row.container_id,
        user=row.user_name,
        server=row.server_name,
        groups=tuple(json.loads(row.groups)),
        profile=row.profile,
        gpu_ids=tuple(json.loads(row.gpu_ids)),
        model=row.model,
        started=float(row.started),
        ended=None if row.ended is None else float(row.ended),
    )


def _summary(row: Any) -> Piece:
    return Piece(
        day=row.day,
        user="",
        groups=tuple(json.loads(row.groups)),
        profile=row.profile,
        model=row.model,
        gpu_seconds=float(row.gpu_seconds),
        records=int(row.records),
    )


class UsageStore:
    """The usage tables of one database (see the module)."""

    def __init__(self, url: str) -> None:
        self.url = url
        # sqlite: the hub's own file, written by JupyterHub too; wait for its lock
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gpuws-usage")
        self._made = threading.Event()

    async def run(self, call: Callable[[], T]) -> T:
        """Run one blocking call in the store's own thread (calls never overlap)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def _begin(self) -> Any:
        if not self._made.is_set():
            metadata.create_all(self.engine)
            self._made.set()
        return self.engine.begin()

    # -- writing --------------------------------------------------------------------------

    def upsert(self, records: Iterable[UsageRecord], seen: float) -> None:
        """Write what Docker says: a new record is inserted; a known one only gets its end
        (once it has one) and, while open, ``last_seen``. Its start never changes."""
        records = list(records)
        if not records:
            return
        with self._begin() as db:
            keys = [r.key for r in records]
            known = {
                row.key: row.ended
                for row in db.execute(
                    sa.select(USAGE.c.key, USAGE.c.ended).where(USAGE.c.key.in_(keys))
                )
            }
            for record in records:
                if record.key not in known:
                    db.execute(USAGE.insert().values(**_columns(record), last_seen=seen))
                elif known[record.key] is None:
                    values: dict[str, Any] = {"last_seen": seen}
                    if record.ended is not None:
                        values["ended"] = record.ended
                    db.execute(USAGE.update().where(USAGE.c.key == record.key).values(**values))

    def close_record(self, key: str, ended: float) -> None:
        """End an open record (its container is gone) at ``ended``."""
        with self._begin() as db:
            db.execute(
                USAGE.update()
                .where(USAGE.c.key == key, USAGE.c.ended.is_(None))
                .values(ended=max(ended, 0.0))
            )

    def retain(self, summary: Sequence[Piece], done: Sequence[UsageRecord]) -> None:
        """Add summary rows and per-user totals for ``done`` records, and delete those."""
        if not done:
            return
        with self._begin() as db:
            for piece in summary:
                _add_summary(db, piece)
            per_user: dict[str, float] = {}
            for record in done:
                per_user[record.user] = per_user.get(record.user, 0.0) + record.gpu_seconds(0.0)
            for user, seconds in per_user.items():
                _add_user_total(db, user, seconds)
            db.execute(USAGE.delete().where(USAGE.c.key.in_([r.key for r in done])))

    # -- reading --------------------------------------------------------------------------

    def open_records(self) -> list[tuple[UsageRecord, float]]:
        """Records without an end, with when each was last seen running."""
        with self._begin() as db:
            rows = db.execute(sa.select(USAGE).where(USAGE.c.ended.is_(None))).all()
        return [(_record(row), float(row.last_seen)) for row in rows]

    def records(
        self, start: float = 0.0, end: float = float("inf"), user: str | None = None
    ) -> list[UsageRecord]:
        """Records that overlap ``[start, end)`` (all of them by default), oldest first."""
        query = sa.select(USAGE).where(
            USAGE.c.started < min(end, 1e18), sa.or_(USAGE.c.ended.is_(None), USAGE.c.ended > start)
        )
        if user is not None:
            query = query.where(USAGE.c.user_name == user)
        with self._begin() as db:
            rows = db.execute(query.order_by(USAGE.c.started, USAGE.c.key)).all()
        return [_record(row) for row in rows]

    def closed_totals(self) -> list[Piece]:
        """GPU-seconds of the ended records, summed in the database per user, profile and
        groups (rows without a day): what the counters add the open records to."""
        seconds = sa.func.sum((USAGE.c.ended - USAGE.c.started) * USAGE.c.gpus)
        query = (
            sa.select(USAGE.c.user_name, USAGE.c.profile, USAGE.c.groups, seconds, sa.func.count())
            .where(USAGE.c.ended.is_not(None))
            .group_by(USAGE.c.user_name, USAGE.c.profile, USAGE.c.groups)
        )
        with self._begin() as db:
            rows = db.execute(query).all()
        return [
            Piece("", user, tuple(json.loads(groups)), profile, "", float(total or 0.0), records=n)
            for user, profile, groups, total, n in rows
        ]

    def summaries(self) -> list[Piece]:
        with self._begin() as db:
            return [_summary(row) for row in db.execute(sa.select(SUMMARY)).all()]

    def user_totals(self) -> dict[str, float]:
        """GPU-seconds of each user's summarised records."""
        with self._begin() as db:
            rows = db.execute(sa.select(USER_TOTAL)).all()
        return {row.user_name: float(row.gpu_seconds) for row in rows}

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


def _columns(record: UsageRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "container_id": record.container_id,
        "user_name": record.user,
        "server_name": record.server,
        "groups": json.dumps(sorted(record.groups)),
        "profile": record.profile,
        "gpu_ids": json.dumps(list(record.gpu_ids)),
        "gpus": len(record.gpu_ids),
        "model": record.model,
        "started": record.started,
        "ended": record.ended,
    }


def _add_summary(db: Any, piece: Piece) -> None:
    groups = json.dumps(sorted(piece.groups))
    match = (
        (SUMMARY.c.day == piece.day)
        & (SUMMARY.c.groups == groups)
        & (SUMMARY.c.profile == piece.profile)
        & (SUMMARY.c.model == piece.model)
    )
    row = db.execute(sa.select(SUMMARY).where(match)).first()
    if row is None:
        db.execute(
            SUMMARY.insert().values(
                day=piece.day,
                groups=groups,
                profile=piece.profile,
                model=piece.model,
                gpu_seconds=piece.gpu_seconds,
                records=piece.records,
            )
        )
    else:
        db.execute(
            SUMMARY.update()
            .where(match)
            .values(
                gpu_seconds=row.gpu_seconds + piece.gpu_seconds, records=row.records + piece.records
            )
        )


def _add_user_total(db: Any, user: str, seconds: float) -> None:
    row = db.execute(sa.select(USER_TOTAL).where(USER_TOTAL.c.user_name == user)).first()
    if row is None:
        db.execute(USER_TOTAL.insert().values(user_name=user, gpu_seconds=seconds))
    else:
        db.execute(
            USER_TOTAL.update()
            .where(USER_TOTAL.c.user_name == user)
            .values(gpu_seconds=row.gpu_seconds + seconds)
        )


__all__ = ["UsageStore", "metadata"]
