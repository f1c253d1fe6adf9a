"""File input: CSV and Parquet, wide and long, time formats and zones, mapping, resume.

Expected times are computed with the standard library (datetime + zoneinfo), not with pyarrow,
which the input uses: an independent oracle for every time format and the DST edges.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.errors import SourceError
from connectors.files.config import FileInput
from connectors.files.source import read_points, time_span
from wire.records import DeadLetter, PointBatch

IDENT = ("acme", "plant")
BERLIN = ZoneInfo("Europe/Berlin")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def cfg(path: Path | str, **kw: Any) -> FileInput:
    return FileInput.model_validate({"type": "file", "path": str(path), **kw})


def read(
    c: FileInput, start: tuple[int, int] = (0, 0)
) -> tuple[list[tuple[str, str, int, float, int]], list[DeadLetter]]:
    points: list[tuple[str, str, int, float, int]] = []
    letters: list[DeadLetter] = []
    for _pos, items in read_points(c, IDENT, start):
        for it in items:
            if isinstance(it, PointBatch):
                for i in range(len(it)):
                    ref = it.tags[int(it.tag_idx[i])]
                    points.append(
                        (
                            ref.path,
                            ref.unit,
                            int(it.ts_ms[i]),
                            float(it.value[i]),
                            int(it.quality[i]),
                        )
                    )
            else:
                letters.append(it)
    return points, letters


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_wide_csv_places_columns_by_mapping_own_path_or_context(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "h.csv",
        "time,ghi,pv/array-1/inv-01/ac_power [kW],temp [C],comment\n"
        "2026-06-01T10:00:00Z,512.5,40.25,21.5,ok\n"
        "2026-06-01T10:01:00+02:00,,41,n/a,x\n",
    )
    c = cfg(
        p,
        columns={"ghi": {"area": "weather", "line": "met", "machine": "pyr-1", "unit": "W/m2"}},
        skip_columns=["comment"],
    )
    points, letters = read(c)
    t0 = ms(datetime(2026, 6, 1, 10, tzinfo=UTC))
    t1 = ms(datetime(2026, 6, 1, 8, 1, tzinfo=UTC))
    assert points == [
        ("acme/plant/weather/met/pyr-1/ghi", "W/m2", t0, 512.5, 0),
        ("acme/plant/pv/array-1/inv-01/ac_power", "kW", t0, 40.25, 0),
        ("acme/plant/history/main/recorder/temp", "C", t0, 21.5, 0),
        ("acme/plant/pv/array-1/inv-01/ac_power", "kW", t1, 41.0, 0),
    ]
    assert letters == []  # an empty cell of a wide file is "no sample", not an error


@pytest.mark.parametrize(
    ("text", "fmt", "zone", "ambiguous", "expected"),
    [
        # local wall time in Berlin, summer (UTC+2) and winter (UTC+1)
        (
            "2026-07-01 12:00:00",
            "iso",
            "Europe/Berlin",
            "raise",
            datetime(2026, 7, 1, 12, tzinfo=BERLIN),
        ),
        (
            "2026-01-15T12:00:00.250",
            "iso",
            "Europe/Berlin",
            "raise",
            datetime(2026, 1, 15, 12, 0, 0, 250_000, tzinfo=BERLIN),
        ),
        # the repeated hour when clocks go back (25 Oct 2026): first or second pass
        (
            "2026-10-25 02:30:00",
            "iso",
            "Europe/Berlin",
            "earliest",
            datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0),
        ),
        (
            "2026-10-25 02:30:00",
            "iso",
            "Europe/Berlin",
            "latest",
            datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
        ),
        (
            "25.10.2026 02:30",
            "%d.%m.%Y %H:%M",
            "Europe/Berlin",
            "latest",
            datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
        ),
        (
            "2026-06-01 10:00:00+0530",
            "%Y-%m-%d %H:%M:%S%z",
            "UTC",
            "raise",
            datetime(2026, 6, 1, 4, 30, tzinfo=UTC),
        ),
        ("1780308000", "epoch_s", "UTC", "raise", datetime(2026, 6, 1, 10, tzinfo=UTC)),
        (
            "1780308000123",
            "epoch_ms",
            "UTC",
            "raise",
            datetime(2026, 6, 1, 10, 0, 0, 123_000, tzinfo=UTC),
        ),
    ],
)
def test_time_formats_and_zones(
    tmp_path: Path, text: str, fmt: str, zone: str, ambiguous: str, expected: datetime
) -> None:
    p = write(tmp_path, "t.csv", f"stamp;x\n{text};1.5\n")
    c = cfg(
        p,
        time={"column": "stamp", "format": fmt, "timezone": zone, "ambiguous": ambiguous},
        csv={"delimiter": ";"},
    )
    points, _ = read(c)
    assert [t for _p, _u, t, _v, _q in points] == [ms(expected)]


def test_the_repeated_hour_is_an_error_unless_resolved(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "time,x\n2026-10-25 02:30:00,1\n")
    with pytest.raises(SourceError, match=r"t\.csv: column 'time' cannot be read"):
        read(cfg(p, time={"timezone": "Europe/Berlin"}))


def test_long_layout_with_units_and_quality_and_reported_gaps(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "long.csv",
        "ts,name,val,u,q\n"
        "2026-06-01T00:00:00Z,pv/array-1/inv-01/ac_power,10,kW,GOOD\n"
        "2026-06-01T00:00:00Z,soc,55.5,%,1\n"
        "2026-06-01T00:01:00Z,soc,,%,BAD\n"
        ",soc,56,%,GOOD\n"
        "2026-06-01T00:02:00Z,soc,57,%,bad\n"
        "2026-06-01T00:03:00Z,pv/array-1/inv-01/ac_power,12,kW,\n",
    )
    c = cfg(
        p,
        layout="long",
        time={"column": "ts"},
        long={"tag": "name", "value": "val", "unit": "u", "quality": "q"},
        columns={"soc": {"area": "storage", "line": "bess", "machine": "bess-01"}},
    )
    points, letters = read(c)
    t = ms(datetime(2026, 6, 1, tzinfo=UTC))
    assert points == [
        ("acme/plant/pv/array-1/inv-01/ac_power", "kW", t, 10.0, 0),
        ("acme/plant/storage/bess/bess-01/soc", "%", t, 55.5, 1),
        ("acme/plant/storage/bess/bess-01/soc", "%", t + 120_000, 57.0, 2),
        ("acme/plant/pv/array-1/inv-01/ac_power", "kW", t + 180_000, 12.0, 0),
    ]
    # one dead letter per kind of problem and file, with the count and the first row
    assert sorted(d.reason.split(": ", 1)[1] for d in letters) == [
        "1 rows without a timestamp (first: data row 4)",
        "1 rows without a value (first: data row 3)",
    ]


def test_parquet_timestamps_bools_and_time_window(tmp_path: Path) -> None:
    # naive local times of the night clocks go forward in Berlin (02:00 -> 03:00)
    stamps = [datetime(2026, 3, 29, h, 30, tzinfo=UTC).replace(tzinfo=None) for h in (0, 1, 3, 4)]
    table = pa.table(
        {
            "time": pa.array(stamps, pa.timestamp("us")),  # naive: local time of the plant
            "running": pa.array([True, False, True, None]),
            "power [kW]": pa.array([1.0, 2.0, 3.0, 4.0]),
        }
    )
    p = tmp_path / "h.parquet"
    pq.write_table(table, p)
    c = cfg(p, time={"timezone": "Europe/Berlin"})
    points, _ = read(c)
    expected = [ms(s.replace(tzinfo=BERLIN)) for s in stamps]
    assert [(path.rsplit("/", 1)[1], u, t, v) for path, u, t, v, _q in points] == [
        ("running", "", expected[0], 1.0),
        ("power", "kW", expected[0], 1.0),
        ("running", "", expected[1], 0.0),
        ("power", "kW", expected[1], 2.0),
        ("running", "", expected[2], 1.0),
        ("power", "kW", expected[2], 3.0),
        ("power", "kW", expected[3], 4.0),
    ]
    assert expected[2] - expected[1] == 3_600_000  # 01:30 -> 03:30 local is one hour
    assert time_span(c) == (expected[0], expected[3])
    window = c.for_replay(expected[1], expected[3])
    assert [t for _p, _u, t, _v, _q in read(window)[0]] == [expected[1]] * 2 + [expected[2]] * 2


def test_resume_from_any_snapshot_gives_exactly_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for part in range(2):
        rows = "".join(
            f"2026-06-0{part + 1}T00:{m // 60:02d}:{m % 60:02d}Z,{rng.normal():.6f},{m}\n"
            for m in range(0, 1000)
        )
        write(tmp_path, f"day{part}.csv", "time,a,b\n" + rows)
    c = cfg(tmp_path / "day*.csv", batch_points=137)
    whole, _ = read(c)
    assert len(whole) == 4000
    positions = [pos for pos, _items in read_points(c, IDENT)]
    for pos in positions[::5]:
        rest, _ = read(c, pos)
        done = sum(
            len(b)
            for p2, items in read_points(c, IDENT)
            if p2 <= pos
            for b in items
            if isinstance(b, PointBatch)
        )
        assert rest == whole[done:], pos


@pytest.mark.parametrize(
    ("text", "kw", "message"),
    [
        ("when,x\n2026-06-01T00:00:00Z,1\n", {}, r"no time column 'time' \(columns: when, x\)"),
        (
            "time,x\n2026-06-01T00:00:00Z,1\n",
            {"columns": {"y": {}}},
            r"mapped columns not in the file: y",
        ),
        ("time,x\n2026-06-01T00:00:00Z,abc\n", {}, r"cannot read"),
        ("time,x\nyesterday,1\n", {}, r"column 'time' cannot be read as time.format 'iso'"),
        (
            "time,tag,value\n2026-06-01T00:00:00Z,a/b,1\n",
            {"layout": "long"},
            r"'a/b' cannot be a tag name",
        ),
    ],
)
def test_bad_files_fail_naming_the_file_and_column(
    tmp_path: Path, text: str, kw: dict[str, Any], message: str
) -> None:
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(SourceError, match=message) as e:
        read(cfg(p, **kw))
    assert "bad.csv" in str(e.value)


def test_no_matching_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no file matches"):
        read(cfg(tmp_path / "*.csv"))


def test_wide_rows_per_machine_with_offsets_in_the_times(tmp_path: Path) -> None:
    """A SCADA export: one row per turbine and time, ISO times with their UTC offset."""
    f = write(
        tmp_path,
        "scada.csv",
        "Wind_turbine_name,Date_time,P_avg,Ws_avg\n"
        "R80736,2014-01-01T01:00:00+01:00,642.5,7.1\n"
        "R80721,2014-01-01T01:00:00+01:00,441.0,\n"
        ",2014-01-01T01:10:00+01:00,1.0,2.0\n"
        "R80736,2014-01-01T01:10:00+01:00,650.0,7.2\n",
    )
    c = cfg(
        f,
        machine_column="Wind_turbine_name",
        time={"column": "Date_time"},
        context={"area": "wind", "line": "farm"},
        columns={"P_avg": {"tag": "active_power", "unit": "kW"}, "Ws_avg": {"unit": "m/s"}},
    )
    points, letters = read(c)
    t0 = ms(datetime(2014, 1, 1, tzinfo=UTC))
    assert points == [
        ("acme/plant/wind/farm/R80736/active_power", "kW", t0, 642.5, 0),
        ("acme/plant/wind/farm/R80736/Ws_avg", "m/s", t0, 7.1, 0),
        ("acme/plant/wind/farm/R80721/active_power", "kW", t0, 441.0, 0),
        ("acme/plant/wind/farm/R80736/active_power", "kW", t0 + 600_000, 650.0, 0),
        ("acme/plant/wind/farm/R80736/Ws_avg", "m/s", t0 + 600_000, 7.2, 0),
    ]
    assert [d.reason for d in letters] == [f"{f}: 1 rows without a machine (first: data row 3)"]
