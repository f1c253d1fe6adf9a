"""Machine states: values of a state tag mapped to named states, as episodes with durations.

A :class:`StateMap` names the state tag(s) (``tags``, a glob; each matching tag is one
machine's state) and how values map to states (``states``: ``{1: run, 2: idle, 3: fault}``;
other values are ``default``). Each tag's points are taken in arrival order (a point not
newer than the tag's newest is skipped and counted, as in the anomaly rules), so episodes are
the same for any batching and any interleaving of sources.

An episode is one event (``kind: state``, ``rule``: the operator id, ``path``: the state tag,
``ts``: the start, ``state``: the name) emitted twice under the same key: when it starts,
with ``end_ms`` null (open), and when it ends, with ``end_ms`` and ``duration_s``. A sink
that upserts on the event key (the database sinks) therefore holds each episode once, open
or closed. An episode ends at the first sample with another state, or, when the tag has been
silent for more than ``max_gap_ms``, at its last sample (the next sample starts a new
episode, of whatever state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict

from operators._state import PickleCopy, TableCache, TagRegistry, tag_matches, tag_order
from operators.errors import RuleError
from operators.state.oee import OeeConfig, OeeMachine
from wire.records import Event, Kpi, PointBatch, TagRef

__all__ = ["Episode", "StateMap", "StateTracker"]


@dataclass(frozen=True, slots=True)
class StateMap:
    """How a machine's state tag maps to named states (see the module docstring)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    tags: str
    states: dict[float, str]
    default: str = "unknown"
    max_gap_ms: int = 300_000
    oee: OeeConfig | None = None

    def __post_init__(self) -> None:
        if self.oee is not None and (
            "/" not in self.tags or any(c in self.state_tag for c in "*?[")
        ):
            msg = (
                f"state map {self.tags}: with oee, tags must end in the state tag's name "
                "(e.g. */production/*/state), so the machine's counters are its siblings"
            )
            raise RuleError(msg)
        if not self.states:
            msg = f"state map {self.tags}: give states (value: name)"
            raise RuleError(msg)
        if self.max_gap_ms <= 0:
            msg = f"state map {self.tags}: max_gap_ms must be positive"
            raise RuleError(msg)

    @property
    def state_tag(self) -> str:
        """The last level of ``tags``: the state tag's name."""
        return self.tags.rsplit("/", 1)[-1]

    def role(self, ref: TagRef) -> str | None:
        """``state``, ``count`` or ``other`` (rejects or good parts) for ``ref``; else None."""
        if tag_matches(self.tags, ref):
            return "state"
        oee = self.oee
        if oee is None or ref.tag not in (oee.count_tag, oee.reject_tag, oee.good_tag):
            return None
        if not tag_matches(self.tags, TagRef(f"{ref.context.path}/{self.state_tag}")):
            return None
        return "count" if ref.tag == oee.count_tag else "other"

    def names(self, values: npt.NDArray[np.float64]) -> list[str]:
        """Return the state name of each value."""
        return [self.states.get(v, self.default) for v in values.tolist()]


@dataclass(slots=True)
class Episode:
    """The open episode of one tag: its state, start, newest sample."""

    state: str
    start_ms: int
    last_ms: int


@dataclass(slots=True)
class _Tag:
    episode: Episode | None = None
    newest: int = -1


@dataclass
class StateTracker(PickleCopy):
    """Turns state-tag samples into episode events, and machines' samples into OEE rows."""

    op_id: str
    maps: tuple[StateMap, ...]
    skipped: int = 0
    _reg: TagRegistry = field(default_factory=TagRegistry)
    _tags: dict[int, _Tag] = field(default_factory=dict)
    _roles: dict[int, tuple[int, str]] = field(default_factory=dict)  # gid -> (map, role)
    _machines: dict[str, OeeMachine] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._luts: TableCache[npt.NDArray[np.int64]] = TableCache(self._lookup)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_luts", None)  # a cache of table lookups, rebuilt on demand
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def _lookup(self, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int64]:
        """Tag id of each table entry with a role (state, count, other), -1 elsewhere."""
        lut = np.full(len(tags), -1, np.int64)
        for i, ref in enumerate(tags):
            for k, m in enumerate(self.maps):
                role = m.role(ref)
                if role is not None:
                    lut[i] = gid = self._reg.id(ref)
                    self._roles[gid] = (k, role)
                    break
        return lut

    def process(self, batch: PointBatch) -> list[Event | Kpi]:
        """Return the events of episodes that started or ended, and OEE rows now due."""
        if not len(batch):
            return []
        gid = self._luts.get(batch.tags)[batch.tag_idx]
        sel = gid >= 0
        live = batch.live()
        if live is not None:
            sel &= live
        if not sel.any():
            return []
        known = np.array(
            [self._tags[g].newest if g in self._tags else -1 for g in range(len(self._reg))],
            np.int64,
        )
        o = tag_order(gid[sel], batch.ts_ms[sel], known)
        fresh = o.ts > o.before
        self.skipped += int((~fresh).sum())
        g, ts, val = o.gid[fresh], o.ts[fresh], batch.value[sel][o.order][fresh]
        out: list[Event | Kpi] = []
        touched: set[str] = set()
        for tag in dict.fromkeys(g.tolist()):
            mine = g == tag
            t, v = ts[mine], val[mine]
            k, role = self._roles[tag]
            ref = self._reg[tag]
            self._tags.setdefault(tag, _Tag()).newest = int(t[-1])
            if role == "state":
                out += self._track(tag, t, v)
            m = self.maps[k]
            if m.oee is not None:
                machine = self._machine(ref.context.path, m)
                machine.feed(role, t, v)
                touched.add(ref.context.path)
        for path in sorted(touched):
            out += self._machines[path].due()
        return out

    def flush(self) -> list[Event | Kpi]:
        """At the end of the input: every machine's remaining OEE windows."""
        out: list[Event | Kpi] = []
        for path in sorted(self._machines):
            out += self._machines[path].due(final=True)
        return out

    def _machine(self, path: str, m: StateMap) -> OeeMachine:
        machine = self._machines.get(path)
        if machine is None:
            assert m.oee is not None
            machine = self._machines[path] = OeeMachine(
                path, m.oee, m.states, m.default, m.max_gap_ms
            )
        return machine

    def _track(
        self, tag: int, ts: npt.NDArray[np.int64], val: npt.NDArray[np.float64]
    ) -> list[Event]:
        ref = self._reg[tag]
        m = self.maps[self._roles[tag][0]]
        st = self._tags[tag]
        out: list[Event] = []
        for t, name in zip(ts.tolist(), m.names(val), strict=True):
            ep = st.episode
            if ep is not None and t - ep.last_ms > m.max_gap_ms:
                out.append(self._event(ref, ep, ep.last_ms))
                ep = st.episode = None
            if ep is not None and name != ep.state:
                out.append(self._event(ref, ep, t))
                ep = st.episode = None
            if ep is None:
                ep = st.episode = Episode(name, t, t)
                out.append(self._event(ref, ep, None))
            ep.last_ms = t
        return out

    def _event(self, ref: TagRef, ep: Episode, end_ms: int | None) -> Event:
        machine = ref.context.machine
        details: dict[str, object] = {"start_ms": ep.start_ms, "end_ms": end_ms, "duration_s": None}
        message = f"{machine}: {ep.state}"
        if end_ms is not None:
            details["duration_s"] = (end_ms - ep.start_ms) / 1000
            message += f" for {details['duration_s']:g} s"
        return Event(
            kind="state",
            rule=self.op_id,
            path=ref.path,
            ts_ms=ep.start_ms,
            severity="info",
            state=ep.state,
            message=message,
            details=details,
        )
