"""Configuration of the file input: recorded history from CSV or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from flows.registry import History, InputModel, TimeZone
from wire.records import ms_to_datetime

__all__ = ["ColumnMap", "Context", "CsvOptions", "FileInput", "LongColumns", "TimeColumn"]

_NAME = r"^[^/\s]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Context(_Model):
    """ISA-95 levels below the site (the site file's ``site`` gives enterprise and site)."""

    area: str = Field(default="history", pattern=_NAME)
    line: str = Field(default="main", pattern=_NAME)
    machine: str = Field(default="recorder", pattern=_NAME)


class ColumnMap(_Model):
    """Where one column (wide) or one tag name (long) goes; unset levels use ``context``."""

    area: str | None = Field(default=None, pattern=_NAME)
    line: str | None = Field(default=None, pattern=_NAME)
    machine: str | None = Field(default=None, pattern=_NAME)
    tag: str | None = Field(default=None, pattern=r"^[^/]+$", description="default: the name")
    unit: str | None = None


class TimeColumn(_Model):
    """The timestamp column and how to read it.

    ``format``: ``iso`` (ISO 8601; values without an offset are in ``timezone``), ``epoch_s``,
    ``epoch_ms``, or a strptime pattern such as ``%d.%m.%Y %H:%M`` (local time in
    ``timezone`` unless it contains ``%z``). Parquet timestamp columns need no format.
    ``ambiguous`` decides the repeated hour when clocks go back (local times only).
    """

    column: str = "time"
    format: str = "iso"
    timezone: TimeZone = "UTC"
    ambiguous: Literal["raise", "earliest", "latest"] = "raise"


class LongColumns(_Model):
    """Column names of the long layout: one row per sample."""

    tag: str = "tag"
    value: str = "value"
    unit: str | None = None
    quality: str | None = None


class CsvOptions(_Model):
    """How CSV text is split and which cells mean "no sample"."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    null_values: tuple[str, ...] = ("", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "-")
    block_size_mb: int = Field(default=16, ge=1, le=1024)


class FileInput(InputModel):
    """Recorded history from CSV or Parquet files, read in large columnar chunks (pyarrow).

    ``wide``: a time column plus one column per tag; with ``machine_column``, one row per
    machine and time (as SCADA exports are): each value column is a tag of the row's machine.
    ``long``: one row per sample with tag,
    value and optionally unit and quality columns. A column (or tag) is placed by ``columns``,
    else by its own name when that is ``area/line/machine/tag``, else under ``context``;
    a name ending in `` [unit]`` gives the unit. ``path`` may be a glob; files are read in
    name order. The input ends at the end of the last file; its snapshot is the position
    (file, row), so a restarted flow resumes where it stopped.
    """

    type: Literal["file"]
    id: str = "file"
    path: str = Field(min_length=1, description="file or glob (*.csv, *.parquet)")
    format: Literal["auto", "csv", "parquet"] = "auto"
    layout: Literal["wide", "long"] = "wide"
    time: TimeColumn = TimeColumn()
    context: Context = Context()
    columns: dict[str, ColumnMap] = Field(
        default_factory=dict, description="column (wide) or tag (long) -> ISA-95 place, unit"
    )
    only_mapped: bool = Field(default=False, description="wide: read only the listed columns")
    skip_columns: tuple[str, ...] = ()
    machine_column: str | None = Field(
        default=None, description="wide: the column naming each row's machine"
    )
    long: LongColumns = LongColumns()
    csv: CsvOptions = CsvOptions()
    batch_points: int = Field(
        default=32_768,
        gt=0,
        le=10_000_000,
        description="points per batch at most (rows = this / value columns): bounds memory",
    )
    start_time: AwareDatetime | None = Field(default=None, description="keep points at or after")
    end_time: AwareDatetime | None = Field(default=None, description="keep points before")

    @model_validator(mode="after")
    def _layout(self) -> FileInput:
        if self.only_mapped and not self.columns:
            msg = "only_mapped needs a columns mapping"
            raise ValueError(msg)
        if self.machine_column is not None and self.layout != "wide":
            msg = "machine_column is for the wide layout (long: the tag column names the tag)"
            raise ValueError(msg)
        return self

    def kind(self, path: Path) -> Literal["csv", "parquet"]:
        """Return the format of ``path`` (``auto``: by its suffix)."""
        if self.format != "auto":
            return self.format
        return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"

    def history(self) -> History:
        """Scan the time column of every file (fast: that column only)."""
        from connectors.files.source import time_span

        first, last = time_span(self)
        return History(first, last)

    def for_replay(self, start_ms: int, end_ms: int) -> FileInput:
        """Keep the points of ``[start_ms, end_ms)``."""
        return self.model_copy(
            update={"start_time": ms_to_datetime(start_ms), "end_time": ms_to_datetime(end_ms)}
        )
