"""OPC UA input (asyncua): subscriptions or polling on an asyncio loop in a thread of its own.

The session lives in the partition's I/O thread, so notifications are taken from the server as
they come whatever the worker is doing; samples reach the flow through a bounded channel.

- Nodes come from an explicit map and/or browse rules (:class:`BrowseRule`): variables under a
  root, at any depth, mapped to ISA-95 places and tag names by path patterns. Standard nodes
  (namespace 0: the Server object, Aliases, Locations) are skipped, browse names are
  sanitised, a variable no pattern maps or a node the server does not know is one dead letter.
- Reads and monitored-item creation are chunked to the server's operation limits.
- Timestamps follow ``timestamps``: ``source`` (the device's time), ``server`` or ``receive``.
  A node's current value is never lost: with ``source``, a value older than the moment its
  subscription (or poll) started is stamped with the time it was received, and a poll of an
  unchanged value is stamped with the poll time; neither is a new sample in the device's past.
- Text values (String) become text points; values of other types one dead letter per node.
- The connection is watched: on loss or a server restart the client reconnects at once, then
  with a backoff capped at ``reconnect_max_s``. A rejected client certificate or user is one
  clear error (what was rejected and where to trust it), retried every ``rejected_retry_s``.
  Every state change is one ``source`` event and one log line. Sessions are closed on every
  exit, so small servers do not run out of sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.ua import status_codes
from bytewax.inputs import FixedPartitionedSource
from typing_extensions import override

from connectors._io import Backoff, Channel, Episodes, Link, SourceItem, ThreadedPartition
from connectors.opcua.config import BrowseRule, OpcUaInput
from flows.logs import reveal
from wire.errors import RecordError
from wire.records import (
    Isa95,
    Point,
    Quality,
    TagRef,
    TagTable,
    TextPoints,
    now_ms,
)

__all__ = ["NodeMap", "OpcUaSource", "quality_of", "sanitize", "stamp"]

log = logging.getLogger(__name__)

_CERT_CODES = {
    "BadSecurityChecksFailed",
    "BadCertificateUntrusted",
    "BadCertificateInvalid",
    "BadCertificateRevoked",
    "BadCertificateIssuerRevoked",
    "BadCertificateUriInvalid",
    "BadCertificateUseNotAllowed",
    "BadCertificateTimeInvalid",
    "BadSecurityPolicyRejected",
}
_USER_CODES = {
    "BadUserAccessDenied",
    "BadIdentityTokenInvalid",
    "BadIdentityTokenRejected",
    "BadUserSignatureInvalid",
}


@dataclass(frozen=True, slots=True)
class NodeMap:
    """One variable: its node id and where its samples go."""

    node_id: str
    path: str  # enterprise/site/area/line/machine/tag
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0


class _Rejected(Exception):
    """The server refused our certificate or our user: retry slowly, say it clearly."""


def quality_of(status: Any) -> int:
    """Map an OPC UA status code to edgeflow quality."""
    if status is None or status.is_good():
        return int(Quality.GOOD)
    if status.is_uncertain():
        return int(Quality.UNCERTAIN)
    return int(Quality.BAD)


def sanitize(name: str) -> str:
    """Return a browse name usable as an ISA-95 level or tag name ('' if none is left)."""
    return re.sub(r"[/\s]+", "_", name.strip()).strip("_")


def _code_name(e: BaseException) -> str:
    code = getattr(e, "code", None)
    if code is None:
        return ""
    try:
        return str(status_codes.get_name_and_doc(int(code))[0])
    except Exception:  # unknown codes have no name
        return f"0x{int(code):08X}"


def _ms(ts: Any) -> int | None:
    return None if ts is None else round(ts.timestamp() * 1000)


def stamp(
    policy: str,
    *,
    source_ms: int | None,
    server_ms: int | None,
    received_ms: int,
    session_ms: int,
    first: bool,
    polled: bool,
    last_source_ms: int | None,
) -> tuple[int, int | None]:
    """Return ``(timestamp of the sample, newest source time seen for the node)``.

    ``receive``: the time it was received. ``server``: the server's time (else received).
    ``source``: the device's time (else server's, else received), except that a node's
    current value is never pushed into the past: the first value after (re)connecting whose
    source time is older than the session is stamped with the time it was received, and a
    poll that finds the source time unchanged is a sample at the poll's time.
    """
    if policy == "receive":
        return received_ms, last_source_ms
    if policy == "server":
        return server_ms or received_ms, last_source_ms
    src = source_ms or server_ms
    if src is None:
        return received_ms, last_source_ms
    newest = src if last_source_ms is None else max(src, last_source_ms)
    if polled and last_source_ms is not None and src <= last_source_ms:
        return received_ms, newest
    if first and src < session_ms:
        return received_ms, newest
    return src, newest


class _Handler:
    """Subscription callbacks (on the I/O loop): collect, never process."""

    def __init__(self, part: _Partition) -> None:
        self.part = part
        self.lost: str | None = None

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.part.pending.append((node.nodeid, data.monitored_item.Value, now_ms()))

    def status_change_notification(self, status: Any) -> None:
        self.lost = f"subscription status {status}"


class _Partition(ThreadedPartition[None]):
    # Closing the session is one round trip; small PLC servers run out of sessions if a
    # stop leaves them open until their timeout.
    stop_grace_s = 1.5

    def __init__(self, src: OpcUaSource) -> None:
        cfg = src.cfg
        super().__init__(cfg.id, Channel(cfg.buffer_size, cfg.overflow), batch_size=10_000)
        self.src, self.cfg = src, cfg
        self.table = TagTable()
        self.count = 0
        self.connects = 0
        self.episodes = Episodes("opcua", f"{cfg.id}:{cfg.url}")
        self.link = Link(cfg.id, cfg.url, f"{src.enterprise}/{src.site}/{cfg.id}", self._put)
        self.pending: list[tuple[Any, Any, int]] = []
        self.nodes: list[NodeMap] = []
        self._index: dict[Any, int] = {}
        self._first: set[int] = set()
        self._last_src: dict[int, int | None] = {}
        self._session_ms = 0
        self._session_open = False
        self._closing = False
        self.start()

    def _put(self, item: SourceItem | None) -> None:
        if item is not None:
            self.channel.put(item, stop=self.stopping)

    # -- the thread ----------------------------------------------------------------------
    @override
    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._guarded())
        finally:
            loop.close()

    async def _guarded(self) -> None:
        main = asyncio.ensure_future(self._main())
        while not main.done():
            await asyncio.wait([main], timeout=0.05)
            # On a stop, cancel the session's work, but never its closing (bounded on its own):
            # a cancelled close leaves the session open on the server.
            if self.wait(0) and not main.done() and not self._closing:
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await main
        if not main.cancelled() and main.exception() is not None:
            raise main.exception()  # type: ignore[misc]

    async def _main(self) -> None:
        backoff = Backoff(max_s=self.cfg.reconnect_max_s)
        while not self.stopping.is_set():
            client: Client | None = None
            delay = 0.0
            try:
                client = self._client()
                await self._connect(client)
                self._session_open = True
                self.connects += 1
                self._session_ms = now_ms()
                await self._discover(client)
                self.link.up(f"{len(self.nodes)} nodes")
                backoff.reset()
                if self.cfg.mode == "polling":
                    await self._poll(client)
                else:
                    await self._subscribe(client)
                return  # max_samples reached
            except _Rejected as e:
                self.link.down(str(e))
                delay = self.cfg.rejected_retry_s
            except Exception as e:  # any failure of the session: report it, reconnect
                self.link.down(self._describe(e))
                delay = backoff.next_delay()
            finally:
                if client is not None:
                    await self._close(client)
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        # A stop request cancels the main task (see _guarded), which ends this sleep too.
        await asyncio.sleep(max(0.0, seconds))

    @staticmethod
    def _describe(e: BaseException) -> str:
        code = _code_name(e)
        text = str(e).strip() or type(e).__name__
        return f"{text} ({code})" if code and code not in text else text

    # -- connection ----------------------------------------------------------------------
    def _client(self) -> Client:
        cfg = self.cfg
        client = Client(cfg.url, timeout=cfg.timeout_s)
        client.session_timeout = 30_000
        if cfg.username:
            client.set_user(cfg.username)
            client.set_password(reveal(cfg.password) if cfg.password else "")
        return client

    async def _connect(self, client: Client) -> None:
        cfg = self.cfg
        if cfg.security != "None":
            await client.set_security_string(f"Basic256Sha256,{cfg.security},{cfg.cert},{cfg.key}")
            client.application_uri = cfg.application_uri
        try:
            await client.connect()
        except AssertionError as e:
            # asyncua reports a server that closed the secure channel on our certificate as a
            # bare AssertionError.
            if cfg.security == "None":
                raise
            raise _Rejected(self._cert_help("the server closed the secure channel")) from e
        except ua.UaStatusCodeError as e:
            code = _code_name(e)
            if code in _CERT_CODES:
                raise _Rejected(self._cert_help(code)) from e
            if code in _USER_CODES:
                msg = (
                    f"the server rejected user {cfg.username or '(anonymous)'} ({code}): "
                    f"check username and password; retrying every {cfg.rejected_retry_s:g} s"
                )
                raise _Rejected(msg) from e
            raise

    def _cert_help(self, why: str) -> str:
        cert = Path(self.cfg.cert or "").resolve()
        return (
            f"the server rejected the client certificate {cert} ({why}): trust it on the "
            "server (node-opcua: copy it into <pki>/trusted/certs, or move it from "
            "<pki>/rejected; asyncua servers: load it as a trusted certificate; UaExpert, "
            "Prosys, KEPServerEX: accept it in the certificate manager), then it connects "
            f"within {self.cfg.rejected_retry_s:g} s"
        )

    async def _close(self, client: Client) -> None:
        # Close the session on every exit: small PLC servers run out of sessions otherwise.
        opened, self._session_open = self._session_open, False
        t0 = time.monotonic()
        self._closing = True
        try:
            await asyncio.wait_for(client.disconnect(), 1.4)
        except Exception as e:  # the server is gone or too slow: it times the session out
            if opened:
                why = str(e) or type(e).__name__
                log.warning("%s: closing the OPC UA session failed: %s", self.cfg.id, why)
        else:
            if opened:
                took_ms = 1000 * (time.monotonic() - t0)
                log.info("%s: OPC UA session closed (%.0f ms)", self.cfg.id, took_ms)
        finally:
            self._closing = False

    # -- nodes -------------------------------------------------------------------------------
    async def _discover(self, client: Client) -> None:
        nodes = list(self.src.nodes)
        for rule in self.cfg.browse:
            nodes += await self._browse(client, rule)
        # Explicit node ids the server does not know: one dead letter each, the rest flows.
        good: list[NodeMap] = []
        for i in range(0, len(nodes), 1000):
            part = nodes[i : i + 1000]
            dvs = await client.read_attributes(
                [client.get_node(n.node_id) for n in part], ua.AttributeIds.NodeClass
            )
            for n, dv in zip(part, dvs, strict=True):
                if dv.StatusCode is not None and not dv.StatusCode.is_good():
                    reason = f"unknown node {n.node_id}: {dv.StatusCode.name}"
                    self._put(
                        self.episodes.seen(
                            ("node", n.node_id), reason, {"node_id": n.node_id, "path": n.path}
                        )
                    )
                else:
                    good.append(n)
        self.nodes = good
        self._index = {client.get_node(n.node_id).nodeid: i for i, n in enumerate(good)}
        self._first = set(range(len(good)))
        self._last_src = {}

    async def _browse(self, client: Client, rule: BrowseRule) -> list[NodeMap]:
        root = client.get_node(rule.root)
        try:
            root_name = sanitize((await root.read_browse_name()).Name)
        except ua.UaStatusCodeError as e:
            reason = f"browse root {rule.root}: {self._describe(e)}"
            self._put(self.episodes.seen(("root", rule.root), reason, {"root": rule.root}))
            return []
        out: list[NodeMap] = []
        seen: set[Any] = set()
        stack: list[tuple[Any, list[str]]] = [(root, [])]
        ent, site = self.src.enterprise, self.src.site
        while stack:
            node, names = stack.pop()
            refs = await node.get_references(
                refs=ua.ObjectIds.HierarchicalReferences,
                direction=ua.BrowseDirection.Forward,
                nodeclassmask=ua.NodeClass.Object | ua.NodeClass.Variable,
                includesubtypes=True,
            )
            for ref in sorted(refs, key=lambda r: r.BrowseName.Name or ""):
                nid = ref.NodeId
                # Standard nodes (the Server object and its diagnostics) and properties are
                # not plant data; a node reached twice is mapped once.
                if nid.NamespaceIndex == 0 or nid in seen:
                    continue
                if ref.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty):
                    continue
                seen.add(nid)
                raw = ref.BrowseName.Name or ""
                name = sanitize(raw)
                if not name:
                    reason = f"browse name {raw!r} under {'/'.join(names) or root_name} is unusable"
                    self._put(
                        self.episodes.seen(
                            ("name", nid.to_string()), reason, {"node_id": nid.to_string()}
                        )
                    )
                    continue
                path = [*names, name]
                if ref.NodeClass == ua.NodeClass.Variable:
                    mapped = self._map(rule, root_name, path, ent, site, nid.to_string())
                    if mapped is not None:
                        out.append(mapped)
                elif len(path) < rule.max_depth:
                    stack.append((client.get_node(nid), path))
        return out

    def _map(
        self, rule: BrowseRule, root_name: str, path: list[str], ent: str, site: str, node_id: str
    ) -> NodeMap | None:
        for pattern in rule.paths:
            got = pattern.match(path)
            if got is None:
                continue
            try:
                ctx = Isa95(
                    ent,
                    site,
                    got.get("area", rule.area),
                    got.get("line", rule.line),
                    got.get("machine", rule.machine or root_name),
                )
                return NodeMap(node_id, TagRef.of(ctx, got["tag"]).path)
            except RecordError as e:
                reason = f"browse path {'/'.join(path)} cannot be mapped: {e}"
                break
        else:
            reason = (
                f"browse path {'/'.join(path)} under {rule.root} matches no pattern of "
                f"{[p.text for p in rule.paths]}"
            )
        self._put(self.episodes.seen(("map", node_id), reason, {"node_id": node_id}))
        return None

    async def _limit(self, client: Client, object_id: int, default: int) -> int:
        try:
            v = await client.get_node(ua.NodeId(object_id)).read_value()
            return int(v) if v else default
        except Exception:  # servers may not expose operation limits
            return default

    # -- samples -------------------------------------------------------------------------
    def _stamp(self, i: int, dv: Any, recv: int, *, polled: bool) -> int:
        first = i in self._first
        self._first.discard(i)
        ts, self._last_src[i] = stamp(
            self.cfg.timestamps,
            source_ms=_ms(dv.SourceTimestamp),
            server_ms=_ms(dv.ServerTimestamp),
            received_ms=recv,
            session_ms=self._session_ms,
            first=first,
            polled=polled,
            last_source_ms=self._last_src.get(i),
        )
        return ts

    def _convert(self, raw: list[tuple[int, Any, int]], *, polled: bool) -> None:
        samples: list[tuple[str, str, int, float, int]] = []
        texts: list[Point] = []
        for i, dv, recv in raw:
            n = self.nodes[i]
            value = dv.Value.Value if dv.Value is not None else None
            quality = quality_of(dv.StatusCode)
            ts = self._stamp(i, dv, recv, polled=polled)
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float):
                samples.append((n.path, n.unit, ts, float(value) * n.scale + n.offset, quality))
            elif isinstance(value, str):
                ref = TagRef(n.path, n.unit)
                texts.append(
                    Point(ts, ref.context, ref.tag, value, n.unit, Quality(quality), self.cfg.id)
                )
            elif value is not None:
                reason = f"{n.node_id}: values of type {type(value).__name__} are not supported"
                self._put(
                    self.episodes.seen(
                        ("type", n.node_id), reason, {"node_id": n.node_id, "path": n.path}
                    )
                )
        limit = self.cfg.max_samples
        if limit is not None:
            samples = samples[: max(0, limit - self.count)]
            if self.count + len(samples) >= limit:
                self.stopping.set()
        self.count += len(samples)
        if samples:
            self._put(self.table.batch(samples, source=self.cfg.id, received_ms=now_ms()))
        if texts:
            self._put(TextPoints(tuple(texts)))

    async def _subscribe(self, client: Client) -> None:
        cfg = self.cfg
        handler = _Handler(self)
        sub = await client.create_subscription(cfg.interval_ms, handler)
        chunk = await self._limit(
            client,
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
            1000,
        )
        objs = [client.get_node(n.node_id) for n in self.nodes]
        for i in range(0, len(objs), chunk):
            part = objs[i : i + chunk]
            if cfg.deadband:
                await sub.deadband_monitor(part, cfg.deadband, queuesize=cfg.queue_size)
            else:
                await sub.subscribe_data_change(
                    part, queuesize=cfg.queue_size, sampling_interval=cfg.sampling_interval_ms
                )
        idle = 0.0
        while not self.stopping.is_set():
            await asyncio.sleep(0.05)
            if handler.lost:
                raise ConnectionError(handler.lost)
            raw, self.pending = self.pending, []
            if raw:
                idle = 0.0
                self._convert(
                    [(self._index[nid], dv, t) for nid, dv, t in raw if nid in self._index],
                    polled=False,
                )
            else:
                idle += 0.05
                if idle >= 1.0:  # a quiet subscription: make sure the server is still there
                    idle = 0.0
                    await client.check_connection()

    async def _poll(self, client: Client) -> None:
        chunk = await self._limit(
            client, ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, 500
        )
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started = loop.time()
            for start in range(0, len(self.nodes), chunk):
                part = self.nodes[start : start + chunk]
                params = ua.ReadParameters()
                params.TimestampsToReturn = ua.TimestampsToReturn.Both
                for n in part:
                    rv = ua.ReadValueId()
                    rv.NodeId = client.get_node(n.node_id).nodeid
                    rv.AttributeId = ua.AttributeIds.Value
                    params.NodesToRead.append(rv)
                dvs = await client.uaclient.read(params)
                recv = now_ms()
                self._convert([(start + k, dv, recv) for k, dv in enumerate(dvs)], polled=True)
            await self._sleep(self.cfg.interval_ms / 1000 - (loop.time() - started))

    @override
    def snapshot(self) -> None:
        return None


@dataclass(frozen=True)
class OpcUaSource(FixedPartitionedSource[SourceItem, None]):
    """Read OPC UA variables; see the module docs. One partition (session) per input."""

    cfg: OpcUaInput
    enterprise: str
    site: str

    @property
    def nodes(self) -> tuple[NodeMap, ...]:
        """The explicitly mapped nodes with their full tag paths."""
        return tuple(
            NodeMap(
                n.node_id,
                f"{self.enterprise}/{self.site}/{n.area}/{n.line}/{n.machine}/{n.tag}",
                n.unit,
                n.scale,
                n.offset,
            )
            for n in self.cfg.nodes
        )

    @override
    def list_parts(self) -> list[str]:
        return [f"{self.cfg.id}:{self.cfg.url}"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self)
