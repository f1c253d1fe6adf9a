"""File input: CSV or Parquet history as point batches, read in large columnar chunks.

pyarrow parses the files (multi-threaded, whole blocks at a time); each chunk becomes one
:class:`PointBatch` with numpy operations only, never a Python loop per row. A wide file's
points come out in time order (each row's columns in file order), so every tag's points are
in the order of the file. Empty cells of a wide file mean "no sample"; rows of a long file
without a value, and rows without a timestamp, are reported as one dead letter per file with
their count and first row. The snapshot is ``(file index, rows done)``: a restart re-opens that
file and skips the rows already delivered. The input ends after the last file.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors.errors import SourceError
from connectors.files.config import ColumnMap, FileInput
from wire.errors import RecordError
from wire.records import DeadLetter, Isa95, PointBatch, Quality, TagRef, TagTable, to_ms

__all__ = ["FileSource", "matching_files", "read_points", "time_span"]


def _lean_memory() -> None:
    """Make pyarrow decode into jemalloc, returning freed pages at once, where it has it.

    The default mimalloc pool keeps tens of MB more resident over a long history (measured on a
    day of 100 tags at 1 Hz: 289 MB peak against 253 MB). Pyarrow readers take no pool of their
    own, so this sets the process's default pool, once, when a file input starts.
    """
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        return
    pa.set_memory_pool(pool)


Item = PointBatch | DeadLetter
Position = tuple[int, int]
_UNIT = re.compile(r"(.+?) \[([^\]]*)\]")


def matching_files(cfg: FileInput) -> list[Path]:
    """Return the files ``cfg.path`` names, in name order; :class:`SourceError` if none."""
    found = sorted(Path(p) for p in glob.glob(cfg.path))
    files = [p for p in found if p.is_file()]
    if not files:
        msg = f"file input {cfg.id}: no file matches {cfg.path!r} (from {Path.cwd()})"
        raise SourceError(msg)
    return files


def _fail(path: Path, what: str, e: Exception | None = None) -> SourceError:
    detail = f": {e}" if e is not None else ""
    return SourceError(f"{path}: {what}{detail}")


def _numpy(arr: Any, dtype: type[np.float64] | type[np.int64], fill: float) -> npt.NDArray[Any]:
    """Read-only numpy view of an Arrow array cast to ``dtype``, nulls as ``fill``.

    Not ``Array.to_numpy``: pyarrow 18+ imports pandas there (75 MB resident, a quarter of a
    backtest's memory goal) although no pandas object is made.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.cast(arr, pa.float64() if dtype is np.float64 else pa.int64())
    if arr.null_count:
        arr = pc.fill_null(arr, fill)
    return np.frombuffer(
        arr.buffers()[1], dtype, count=len(arr), offset=arr.offset * np.dtype(dtype).itemsize
    )


def _epoch_ms(col: Any, cfg: FileInput, path: Path) -> npt.NDArray[np.float64]:
    """Return the times of one chunk as float epoch ms (NaN where the cell is empty)."""
    spec = cfg.time
    typ = col.type
    try:
        if pa.types.is_timestamp(typ):
            if typ.tz is None:
                col = pc.assume_timezone(col, spec.timezone, ambiguous=spec.ambiguous)
            ms = pc.cast(pc.cast(col, pa.timestamp("ms", "UTC")), pa.int64())
        elif pa.types.is_date(typ):
            ms = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
        elif spec.format in ("epoch_s", "epoch_ms"):
            scale = 1000.0 if spec.format == "epoch_s" else 1.0
            values = _numpy(col, np.float64, math.nan)
            return np.asarray(np.round(values * scale), np.float64)
        elif spec.format == "iso":
            col = pc.cast(col, pa.string())
            try:
                ms = pc.cast(pc.cast(col, pa.timestamp("ms", "UTC")), pa.int64())
            except pa.ArrowInvalid:
                naive = pc.cast(col, pa.timestamp("ms"))
                local = pc.assume_timezone(naive, spec.timezone, ambiguous=spec.ambiguous)
                ms = pc.cast(pc.cast(local, pa.timestamp("ms", "UTC")), pa.int64())
        else:
            parsed = pc.strptime(pc.cast(col, pa.string()), format=spec.format, unit="ms")
            if "%z" not in spec.format:
                parsed = pc.assume_timezone(parsed, spec.timezone, ambiguous=spec.ambiguous)
            ms = pc.cast(pc.cast(parsed, pa.timestamp("ms", "UTC")), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        what = f"column {spec.column!r} cannot be read as time.format {spec.format!r}"
        raise _fail(path, what, e) from e
    return _numpy(ms, np.float64, math.nan)


def _floats(col: Any, name: str, path: Path) -> npt.NDArray[np.float64]:
    try:
        return _numpy(col, np.float64, math.nan)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _fail(path, f"column {name!r} is not numeric", e) from e


@dataclass
class _Problems:
    """Rows a file could not turn into points: counted, reported once per file."""

    no_time: int = 0
    no_time_first: int = -1
    no_value: int = 0
    no_value_first: int = -1
    no_machine: int = 0
    no_machine_first: int = -1

    def letters(self, path: Path, source: str) -> list[DeadLetter]:
        out = []
        if self.no_time:
            reason = (
                f"{path}: {self.no_time} rows without a timestamp "
                f"(first: data row {self.no_time_first + 1})"
            )
            out.append(DeadLetter("file", reason, {"file": str(path)}, source=source))
        if self.no_value:
            reason = (
                f"{path}: {self.no_value} rows without a value "
                f"(first: data row {self.no_value_first + 1})"
            )
            out.append(DeadLetter("file", reason, {"file": str(path)}, source=source))
        if self.no_machine:
            reason = (
                f"{path}: {self.no_machine} rows without a machine "
                f"(first: data row {self.no_machine_first + 1})"
            )
            out.append(DeadLetter("file", reason, {"file": str(path)}, source=source))
        return out


class _FileReader:
    """One file, chunk by chunk, as point batches against a shared tag table."""

    def __init__(
        self,
        cfg: FileInput,
        path: Path,
        ident: tuple[str, str],
        table: TagTable,
        *,
        time_only: bool = False,
    ) -> None:
        self.cfg, self.path, self.ident, self.table = cfg, path, ident, table
        self.kind = cfg.kind(path)
        self.source = f"file:{path.name}"
        self.problems = _Problems()
        self.start_ms = None if cfg.start_time is None else to_ms(cfg.start_time)
        self.end_ms = None if cfg.end_time is None else to_ms(cfg.end_time)
        names = self._names()
        if cfg.time.column not in names:
            msg = f"no time column {cfg.time.column!r} (columns: {', '.join(names)})"
            raise _fail(path, msg)
        if time_only:
            self.values, self.wanted = [], [cfg.time.column]
        elif cfg.layout == "wide":
            missing = [c for c in cfg.columns if c not in names]
            if missing:
                raise _fail(path, f"mapped columns not in the file: {', '.join(missing)}")
            machine = cfg.machine_column
            if machine is not None and machine not in names:
                raise _fail(path, f"no machine_column {machine!r} (columns: {', '.join(names)})")
            self.values = [
                c
                for c in names
                if c not in (cfg.time.column, machine)
                and c not in cfg.skip_columns
                and (not cfg.only_mapped or c in cfg.columns)
            ]
            if machine is None:
                self.wide_idx = np.asarray(
                    [table.index(self._ref(c)) for c in self.values], np.int32
                )
            self.wanted = [cfg.time.column, *self.values, *([machine] if machine else [])]
        else:
            lc = cfg.long
            need = [lc.tag, lc.value, *(c for c in (lc.unit, lc.quality) if c)]
            absent = [c for c in need if c not in names]
            if absent:
                raise _fail(path, f"long layout columns not in the file: {', '.join(absent)}")
            self.wanted = [cfg.time.column, *need]
        width = len(self.values) if cfg.layout == "wide" else 1
        self.rows_per_batch = max(1, cfg.batch_points // max(1, width))
        self._refs: dict[tuple[str, str], int] = {}
        self._qualities: dict[str, int] = {}

    def _names(self) -> list[str]:
        try:
            if self.kind == "parquet":
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            with pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=1 << 16),
                parse_options=pacsv.ParseOptions(delimiter=self.cfg.csv.delimiter),
            ) as r:
                return list(r.schema.names)
        except (OSError, pa.ArrowInvalid) as e:
            raise _fail(self.path, f"cannot read as {self.kind}", e) from e

    def _ref(self, name: str, unit: str | None = None, machine: str | None = None) -> TagRef:
        m = self.cfg.columns.get(name)
        if machine is not None:  # the row's machine (machine_column) places the column
            m = ColumnMap(
                area=m.area if m else None,
                line=m.line if m else None,
                machine=machine,
                tag=m.tag if m else None,
                unit=m.unit if m else None,
            )
        ctx = self.cfg.context
        bare = _UNIT.fullmatch(name)
        if m is None and bare is not None:  # "power [kW]": the unit in brackets
            name, unit = bare.group(1), bare.group(2)
        parts = name.split("/")
        if m is None and len(parts) == 4:  # "area/line/machine/tag" names its own place
            area, line, machine, tag = parts
        else:
            area = (m.area if m else None) or ctx.area
            line = (m.line if m else None) or ctx.line
            machine = (m.machine if m else None) or ctx.machine
            tag = (m.tag if m else None) or name
        try:
            place = Isa95(self.ident[0], self.ident[1], area, line, machine)
        except RecordError as e:
            raise _fail(self.path, f"column or tag {name!r} names no ISA-95 place", e) from e
        try:
            return TagRef.of(place, tag, (m.unit if m and m.unit is not None else unit) or "")
        except RecordError as e:
            raise _fail(self.path, f"column or tag {name!r} cannot be a tag name", e) from e

    def _chunks(self) -> Iterator[pa.RecordBatch]:
        cfg = self.cfg
        try:
            if self.kind == "parquet":
                # No pre-buffering: it reads row groups far ahead and holds them (hundreds of
                # MB for a long file); one batch of rows at a time keeps memory flat.
                yield from pq.ParquetFile(self.path, pre_buffer=False).iter_batches(
                    batch_size=self.rows_per_batch, columns=self.wanted, use_threads=False
                )
                return
            types: dict[str, pa.DataType] = {}
            if cfg.layout == "wide":
                types = dict.fromkeys(self.values, pa.float64())
                if cfg.machine_column is not None:
                    types[cfg.machine_column] = pa.string()
            else:
                types = {cfg.long.value: pa.float64(), cfg.long.tag: pa.string()}
                if cfg.long.unit:
                    types[cfg.long.unit] = pa.string()
            if cfg.time.format not in ("epoch_s", "epoch_ms"):
                types[cfg.time.column] = pa.string()
            block = cfg.csv.block_size_mb << 20
            parse = pacsv.ParseOptions(delimiter=cfg.csv.delimiter)
            convert = pacsv.ConvertOptions(
                column_types=types,
                include_columns=self.wanted,
                null_values=list(cfg.csv.null_values),
                strings_can_be_null=True,
            )
            if self.path.stat().st_size <= block:
                # A file within one block: the streaming reader would parse it as one block on
                # one thread; reading it whole holds no more and parses it in parallel.
                table = pacsv.read_csv(self.path, parse_options=parse, convert_options=convert)
                yield from table.to_batches()
                return
            with pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=block),
                parse_options=parse,
                convert_options=convert,
            ) as reader:
                yield from reader
        except (OSError, pa.ArrowInvalid) as e:
            raise _fail(self.path, "cannot read", e) from e

    def batches(self, skip_rows: int) -> Iterator[tuple[int, list[Item]]]:
        """Yield ``(rows done, items)`` per batch of rows, after skipping ``skip_rows`` rows."""
        done = 0
        step = self.rows_per_batch
        for whole in self._chunks():
            for lo in range(0, whole.num_rows, step):
                chunk = whole.slice(lo, step)
                first = done
                done += chunk.num_rows
                if done <= skip_rows:
                    continue
                if first < skip_rows:
                    chunk = chunk.slice(skip_rows - first)
                    first = skip_rows
                batch = self._convert(chunk, first)
                yield done, [batch] if batch is not None and len(batch) else []
        yield done, list(self.problems.letters(self.path, self.source))

    def _keep(self, ts: npt.NDArray[np.float64], row0: int) -> npt.NDArray[np.bool_]:
        keep = ~np.isnan(ts)
        missing = int(len(ts) - keep.sum())
        if missing:
            if not self.problems.no_time:
                self.problems.no_time_first = row0 + int(np.flatnonzero(~keep)[0])
            self.problems.no_time += missing
        if self.start_ms is not None:
            keep &= ts >= self.start_ms
        if self.end_ms is not None:
            keep &= ts < self.end_ms
        return keep

    def _convert(self, chunk: pa.RecordBatch, row0: int) -> PointBatch | None:
        ts = _epoch_ms(chunk.column(self.cfg.time.column), self.cfg, self.path)
        keep = self._keep(ts, row0)
        if self.cfg.layout == "wide":
            return self._wide(chunk, ts, keep, row0)
        return self._long(chunk, ts, keep, row0)

    def _wide(
        self,
        chunk: pa.RecordBatch,
        ts: npt.NDArray[np.float64],
        keep: npt.NDArray[np.bool_],
        row0: int,
    ) -> PointBatch | None:
        if not self.values:
            return None
        matrix = np.column_stack([_floats(chunk.column(c), c, self.path) for c in self.values])
        if self.cfg.machine_column is not None:
            codes, machines = _codes(chunk.column(self.cfg.machine_column))
            lost = keep & (codes < 0)
            if lost.any():
                if not self.problems.no_machine:
                    self.problems.no_machine_first = row0 + int(np.flatnonzero(lost)[0])
                self.problems.no_machine += int(lost.sum())
            keep = keep & (codes >= 0)
            # Tag index of each (machine of this chunk, value column).
            lut = np.asarray(
                [[self._machine_tag(m, c) for c in self.values] for m in machines] or [[0]],
                np.int32,
            )
        valid = ~np.isnan(matrix) & keep[:, None]
        rows, cols = np.nonzero(valid)  # row-major: time order, then file column order
        idx = lut[codes[rows], cols] if self.cfg.machine_column is not None else self.wide_idx[cols]
        return PointBatch(
            self.table.tags,
            idx,
            ts[rows].astype(np.int64),
            matrix[rows, cols],
            np.zeros(len(rows), np.uint8),
            source=self.source,
        )

    def _long(
        self,
        chunk: pa.RecordBatch,
        ts: npt.NDArray[np.float64],
        keep: npt.NDArray[np.bool_],
        row0: int,
    ) -> PointBatch | None:
        lc = self.cfg.long
        value = _floats(chunk.column(lc.value), lc.value, self.path)
        has_value = ~np.isnan(value)
        tag_codes, tag_names = _codes(chunk.column(lc.tag))
        has_value &= tag_codes >= 0
        lost = keep & ~has_value
        if lost.any():
            if not self.problems.no_value:
                self.problems.no_value_first = row0 + int(np.flatnonzero(lost)[0])
            self.problems.no_value += int(lost.sum())
        keep = keep & has_value
        if lc.unit:
            unit_codes, unit_names = _codes(chunk.column(lc.unit))
        else:
            unit_codes, unit_names = np.zeros(len(value), np.int64), [""]
        width = len(unit_names) + 1
        combined = tag_codes * width + (unit_codes + 1)
        uniq, inverse = np.unique(combined[keep], return_inverse=True)
        idx_of = np.empty(len(uniq), np.int32)
        for j, code in enumerate(uniq.tolist()):
            name = tag_names[code // width]
            u = code % width - 1
            unit = unit_names[u] if u >= 0 else ""
            key = (name, unit)
            i = self._refs.get(key)
            if i is None:
                i = self._refs[key] = self.table.index(self._ref(name, unit))
            idx_of[j] = i
        quality = np.zeros(int(keep.sum()), np.uint8)
        if lc.quality:
            q_codes, q_names = _codes(chunk.column(lc.quality))
            q_map = np.asarray([self._quality(q) for q in q_names] or [0], np.uint8)
            q = q_codes[keep]
            quality = np.where(q >= 0, q_map[np.maximum(q, 0)], 0).astype(np.uint8)
        return PointBatch(
            self.table.tags,
            idx_of[inverse] if len(uniq) else np.empty(0, np.int32),
            ts[keep].astype(np.int64),
            value[keep],
            quality,
            source=self.source,
        )

    def _machine_tag(self, machine: str, column: str) -> int:
        i = self._refs.get((machine, column))
        if i is None:
            i = self._refs[(machine, column)] = self.table.index(self._ref(column, machine=machine))
        return i

    def _quality(self, raw: str) -> int:
        q = self._qualities.get(raw)
        if q is None:
            try:
                q = int(Quality.parse(int(raw) if raw.lstrip("-").isdigit() else raw))
            except RecordError as e:
                raise _fail(self.path, f"column {self.cfg.long.quality!r}", e) from e
            self._qualities[raw] = q
        return q


def _codes(col: Any) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Dictionary-encode a text column: per-row codes (-1 where empty) and the distinct values."""
    enc = pc.dictionary_encode(pc.cast(col, pa.string()))
    return _numpy(enc.indices, np.int64, -1), [str(v) for v in enc.dictionary.to_pylist()]


def time_span(cfg: FileInput) -> tuple[int | None, int | None]:
    """Return the first and last point time of the files (None, None if they hold none)."""
    only_time = cfg.model_copy(
        update={
            "layout": "wide",
            "only_mapped": False,
            "columns": {},
            "start_time": None,
            "end_time": None,
        }
    )
    first: float | None = None
    last: float | None = None
    for path in matching_files(cfg):
        reader = _FileReader(only_time, path, ("x", "x"), TagTable(), time_only=True)
        for chunk in reader._chunks():
            ts = _epoch_ms(chunk.column(cfg.time.column), cfg, path)
            ts = ts[~np.isnan(ts)]
            if len(ts):
                lo, hi = float(ts.min()), float(ts.max())
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
    return (None if first is None else int(first), None if last is None else int(last))


def read_points(
    cfg: FileInput, ident: tuple[str, str], start: Position = (0, 0)
) -> Iterator[tuple[Position, list[Item]]]:
    """Yield ``((file index, rows done), items)`` over every file from ``start``."""
    _lean_memory()
    table = TagTable()
    files = matching_files(cfg)
    first_file, skip = start
    for i, path in enumerate(files):
        if i < first_file:
            continue
        reader = _FileReader(cfg, path, ident, table)
        for done, items in reader.batches(skip if i == first_file else 0):
            yield (i, done), items
        yield (i + 1, 0), []


class _Partition(StatefulSourcePartition[Item, Position]):
    def __init__(self, cfg: FileInput, ident: tuple[str, str], resume: Position | None) -> None:
        self.position: Position = resume or (0, 0)
        self._it = read_points(cfg, ident, self.position)

    @override
    def next_batch(self) -> list[Item]:
        self.position, items = next(self._it)  # StopIteration after the last file ends it
        return items

    @override
    def snapshot(self) -> Position:
        return self.position


@dataclass(frozen=True)
class FileSource(FixedPartitionedSource[Item, Position]):
    """One partition reading every matching file in order; see the module docstring."""

    cfg: FileInput
    ident: tuple[str, str]

    @override
    def list_parts(self) -> list[str]:
        matching_files(self.cfg)  # fail at start, naming the pattern, if nothing matches
        return [f"file:{self.cfg.id}"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: Position | None) -> _Partition:
        return _Partition(self.cfg, self.ident, resume_state)
