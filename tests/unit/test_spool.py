"""The durable spool: order, acknowledgement, crash recovery, truncation to a snapshot, bounds."""

from __future__ import annotations

import os
from pathlib import Path

from connectors._spool import Spool


def fill(sp: Spool, n: int, *, epoch: int = 1, start: int = 0) -> list[int]:
    return [sp.append(f"r{i}".encode(), epoch) for i in range(start, start + n)]


def test_records_come_back_in_order_and_acks_delete_segments(tmp_path: Path):
    sp = Spool(tmp_path, segment_bytes=100)
    assert fill(sp, 20) == list(range(20))
    sp.flush()
    got = sp.read(-1, 1000)
    assert [r.data for r in got] == [f"r{i}".encode() for i in range(20)]
    assert [r.seq for r in sp.read(14, 3)] == [15, 16, 17]
    segments = len(list(tmp_path.glob("*.seg")))
    sp.ack(17)
    assert sp.pending() == 2
    assert len(list(tmp_path.glob("*.seg"))) < segments
    assert [r.seq for r in sp.read(17, 10)] == [18, 19]


def test_a_torn_record_is_cut_off_and_the_rest_survives_a_crash(tmp_path: Path):
    sp = Spool(tmp_path)
    fill(sp, 5)
    sp.sync()
    sp.save_meta()
    seg = next(tmp_path.glob("*.seg"))
    with seg.open("ab") as f:  # kill -9 in the middle of a write
        f.write(b"\x10\x00\x00\x00garbage")
    again = Spool(tmp_path)
    assert [r.data for r in again.read(-1, 100)] == [f"r{i}".encode() for i in range(5)]
    assert again.append(b"next", 2) == 5


def test_acknowledged_records_stay_delivered_after_a_restart(tmp_path: Path):
    sp = Spool(tmp_path, segment_bytes=50)
    fill(sp, 10)
    sp.sync()
    sp.ack(6)
    sp.save_meta(partition_offsets={"0": 41})
    sp.close()
    again = Spool(tmp_path)
    assert [r.seq for r in again.read(again.acked, 100)] == [7, 8, 9]
    assert again.meta["partition_offsets"] == {"0": 41}


def test_truncate_drops_what_was_appended_after_a_snapshot(tmp_path: Path):
    sp = Spool(tmp_path, segment_bytes=40)
    fill(sp, 12)
    sp.ack(5)
    assert sp.truncate(7) == 4  # 8..11 were appended after the snapshot at 7
    assert fill(sp, 2, start=100) == [8, 9]  # the replay appends them again
    assert [(r.seq, r.data) for r in sp.read(5, 100)] == [
        (6, b"r6"),
        (7, b"r7"),
        (8, b"r100"),
        (9, b"r101"),
    ]


def test_records_acknowledged_beyond_a_snapshot_are_delivered_again(tmp_path: Path):
    sp = Spool(tmp_path)
    fill(sp, 12)
    sp.ack(9)  # the destination took them, but the snapshot was at 7: the replay redoes them
    sp.truncate(7)
    assert sp.acked == 7


def test_drop_oldest_keeps_the_newest_and_reports(tmp_path: Path):
    reports: list[tuple[int, str]] = []
    sp = Spool(
        tmp_path,
        max_bytes=400,
        segment_bytes=100,
        on_overflow=lambda n, why: reports.append((n, why)),
    )
    fill(sp, 40)
    assert sp.dropped > 0 and sum(n for n, _ in reports) == sp.dropped
    seqs = [r.seq for r in sp.read(sp.acked, 1000)]
    assert seqs == list(range(40 - len(seqs), 40))  # a contiguous tail: the newest survive
    assert sp.size_bytes() <= 400


def test_drop_newest_refuses_when_full(tmp_path: Path):
    sp = Spool(tmp_path, max_bytes=200, segment_bytes=100, overflow="drop_newest")
    got = fill(sp, 40)
    assert got[:3] == [0, 1, 2] and got[-1] is None
    assert [r.seq for r in sp.read(-1, 1000)] == [s for s in got if s is not None]


def test_records_older_than_max_age_are_dropped(tmp_path: Path):
    sp = Spool(tmp_path, max_age_s=60, segment_bytes=30)
    fill(sp, 6)
    old = sorted(tmp_path.glob("*.seg"))[0]
    os.utime(old, (0, 0))
    again = Spool(tmp_path, max_age_s=60, segment_bytes=30)
    again.append(b"new", 2)
    assert again.dropped > 0
    assert again.read(again.acked, 100)[-1].data == b"new"
