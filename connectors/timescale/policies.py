"""TimescaleDB policies that follow the site file: what to add, alter or remove at start.

:func:`plan` compares the policies the server has (``timescaledb_information.jobs``) with the
ones the config asks for and returns the statements that make them equal, with one line per
change for the log. It is pure, so the statements are table-tested without TimescaleDB; the
statements follow TimescaleDB's documentation (``add_compression_policy``,
``add_retention_policy``, ``alter_job``, ``remove_*_policy``) and are run only against a
server with the extension (not here: see the README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

__all__ = ["Current", "Policy", "Statement", "interval_ms", "plan"]

Kind = Literal["compression", "retention"]
Statement = tuple[str, tuple[Any, ...]]

#: The job's config key that holds the interval, per policy kind.
_KEY: dict[Kind, str] = {"compression": "compress_after", "retention": "drop_after"}

_UNITS_MS = {
    "ms": 1,
    "millisecond": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "w": 604_800_000,
    "week": 604_800_000,
}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")


def interval_ms(text: str) -> int:
    """Return a PostgreSQL interval written as ``<n> <unit>`` in ms; ValueError otherwise.

    Units from milliseconds to weeks: months and years have no fixed length, so a policy in
    them could not be compared with the lateness it must exceed.
    """
    m = _INTERVAL.match(text.lower())
    unit = m.group(2) if m else ""
    if unit not in _UNITS_MS and unit.endswith("s"):
        unit = unit[:-1]  # plural
    if m is None or unit not in _UNITS_MS:
        msg = (
            f"{text!r} is not an interval such as '7 days' (a whole number and a unit from "
            "milliseconds to weeks)"
        )
        raise ValueError(msg)
    return int(m.group(1)) * _UNITS_MS[unit]


@dataclass(frozen=True, slots=True)
class Policy:
    """What the config asks of one table: each interval, or None for no such policy."""

    table: str
    compress_after: str | None
    retain_for: str | None


@dataclass(frozen=True, slots=True)
class Current:
    """A policy job on the server: its table, kind, id and interval."""

    table: str
    kind: Kind
    job_id: int
    interval: timedelta


def plan(
    schema: str, wanted: list[Policy], current: list[Current]
) -> tuple[list[Statement], list[str]]:
    """Return the statements that make the server's policies match ``wanted``, and the changes.

    A policy the config no longer names is removed; one whose interval differs is altered in
    place (``alter_job``, keeping the job and its history); a new one is added. Policies of
    tables not in ``wanted`` are left alone.
    """
    have = {(c.table, c.kind): c for c in current}
    statements: list[Statement] = []
    changes: list[str] = []
    for p in wanted:
        rel = f'"{schema}"."{p.table}"'
        asked: tuple[tuple[Kind, str | None], ...] = (
            ("compression", p.compress_after),
            ("retention", p.retain_for),
        )
        for kind, want in asked:
            job, key = have.get((p.table, kind)), _KEY[kind]
            if want is None:
                if job is not None:
                    sql = f"select remove_{kind}_policy(%s, if_exists => true)"
                    statements.append((sql, (rel,)))
                    changes.append(f"{p.table}: {kind} policy removed")
            elif job is None:
                sql = f"select add_{kind}_policy(%s, %s::interval, if_not_exists => true)"
                statements.append((sql, (rel, want)))
                changes.append(f"{p.table}: {kind} policy added ({key} {want})")
            elif job.interval != timedelta(milliseconds=interval_ms(want)):
                sql = (
                    "select alter_job(%s, config => jsonb_set(config, %s, "
                    "to_jsonb(%s::interval::text)))"
                )
                statements.append((sql, (job.job_id, f"{{{key}}}", want)))
                changes.append(f"{p.table}: {kind} {key} {_show(job.interval)} -> {want}")
    return statements, changes


def _show(td: timedelta) -> str:
    ms = int(td.total_seconds() * 1000)
    for unit, size in (("weeks", 604_800_000), ("days", 86_400_000), ("hours", 3_600_000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"
