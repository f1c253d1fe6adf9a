"""JSON Lines file sink: one line per record, appended, flushed after every batch.

Rows are encoded as everywhere else (:func:`wire.points.encode_row`): non-finite floats are
``null``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from connectors.errors import SinkError
from wire.points import encode_row

__all__ = ["JsonLinesSink"]


class _JsonLinesPartition(StatelessSinkPartition[dict[str, Any]]):
    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f: BinaryIO = path.open("ab")
        except OSError as e:
            msg = f"cannot open {path} for appending: {e.strerror or e}"
            raise SinkError(msg) from e

    @override
    def write_batch(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        self._f.write(b"".join(encode_row(i) + b"\n" for i in items))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    @override
    def close(self) -> None:
        self._f.close()


class JsonLinesSink(DynamicSink[dict[str, Any]]):
    """Append records as JSON lines to ``path``.

    With several workers each writes ``<stem>.w<index><suffix>`` so lines never interleave.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonLinesPartition:
        path = self.path
        if worker_count > 1:
            path = path.with_name(f"{path.stem}.w{worker_index}{path.suffix}")
        return _JsonLinesPartition(path, self.fsync)
