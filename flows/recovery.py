"""What the running flow's recovery store has committed (for exactly-once delivery).

Bytewax resumes a flow from the smallest frontier its workers wrote to the recovery store:
every epoch before it is committed (its snapshots are durable) and is never replayed. A sink
that delivers an epoch's output only once that epoch is committed never delivers anything a
replay after ``kill -9`` would produce again. Bytewax does not tell sinks this frontier; it is
read (read-only) from the store's SQLite files, whose directory comes from the command line
(``-r DIR``) or ``EDGEFLOW_RECOVERY_DIR``.

The files are read by a small helper process, never in the flow's own process: bytewax writes
them with its own copy of SQLite, and two SQLite copies in one process break each other's
POSIX locks (closing one connection drops the other's), after which one may rebuild the WAL
index the other has mapped: the flow died with SIGBUS after a restart.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from flows.lifecycle import run_option

__all__ = [
    "committed_frontier",
    "read_frontier",
    "epoch_bound",
    "note_epoch",
    "recovery_dir",
    "reset_epochs",
    "start_epoch",
]


def recovery_dir(argv: list[str] | None = None) -> Path | None:
    """Return the recovery directory this process runs with (None: no recovery)."""
    env = os.environ.get("EDGEFLOW_RECOVERY_DIR")
    if env:
        return Path(env)
    value = run_option(("-r", "--recovery-directory"), argv)
    return None if value is None else Path(value)


_readers: dict[Path, subprocess.Popen[str]] = {}
_readers_lock = threading.Lock()


def committed_frontier(directory: Path) -> int | None:
    """Return the epoch the flow would resume from: every earlier epoch is committed.

    None when the store cannot be read (yet): callers then wait. Read by a helper process
    (see the module docstring); one per store, ended with this process.
    """
    key = Path(directory).resolve()
    with _readers_lock:
        proc = _readers.get(key)
        if proc is None or proc.poll() is not None:
            proc = _readers[key] = subprocess.Popen(
                [sys.executable, "-m", "flows.recovery", str(key)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": _import_root()},
            )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
        except OSError:
            return None
    return int(answer) if answer.lstrip("-").isdigit() else None


def _import_root() -> str:
    root = str(Path(__file__).resolve().parents[1])
    extra = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{extra}" if extra else root


def read_frontier(directory: Path) -> int | None:
    """Read the frontier from the store's files (only in a process without bytewax)."""
    rows: list[tuple[int, int, int]] = []
    exs: list[tuple[int, int, int]] = []
    for path in sorted(directory.glob("*.sqlite3")):
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
            try:
                rows += conn.execute(
                    "SELECT ex_num, worker_index, worker_frontier FROM fronts"
                ).fetchall()
                exs += conn.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
    if not exs:
        return None
    ex, workers, resume = max(exs)
    best: dict[int, int] = {}
    for e, w, f in rows:
        if e == ex:
            best[w] = max(best.get(w, resume), f)
    return min(best.get(w, resume) for w in range(workers))


def start_epoch() -> int:
    """Return the epoch this execution starts at: 1, or the resume epoch with recovery."""
    d = recovery_dir()
    f = committed_frontier(d) if d is not None else None
    return f if f is not None else 1


_epoch_lock = threading.Lock()
_epoch_seen = 0


def note_epoch(epoch: int) -> None:
    """Record that an input of this process is now emitting in ``epoch``."""
    global _epoch_seen
    with _epoch_lock:
        _epoch_seen = max(_epoch_seen, epoch)


def epoch_bound() -> int:
    """Return an epoch no item of this process's inputs emitted so far is later than.

    Inputs advance one epoch per snapshot (see :func:`flows.system.track`); an item reaching
    a sink now was emitted in this epoch or earlier, so delivering it once the store committed
    this epoch never delivers what a replay would produce again.
    """
    with _epoch_lock:
        return _epoch_seen if _epoch_seen else start_epoch()


def reset_epochs() -> None:
    """Forget the epochs seen (between runs in one process, e.g. tests)."""
    global _epoch_seen
    with _epoch_lock:
        _epoch_seen = 0


def _serve(directory: Path) -> None:
    # The helper: one line in, one frontier out, until the flow closes our stdin. Ctrl-C
    # reaches the whole process group: the flow handles it; the helper ends with the flow.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for _ in sys.stdin:
        got = read_frontier(directory)
        sys.stdout.write(f"{'none' if got is None else got}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
