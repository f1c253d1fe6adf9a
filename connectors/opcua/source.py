"""OPC UA source (asyncua) in subscription or polling mode, via ``bytewax.inputs.batch_async``.

Nodes come from an explicit map (node id -> tag, ISA-95 place, unit, scale/offset) and/or from
browsing folders (``root/<area>/<line>/<machine>/<variable>``). Reads and monitored-item
creation are chunked to the server's ``MaxNodesPerRead`` / ``MaxMonitoredItemsPerCall``.
A node id the server does not know is reported once as a dead letter and skipped; the others
keep flowing. Status codes map to quality (Good/Uncertain/Bad). On session loss or a server
restart the source reconnects with exponential backoff and re-creates its subscription.
Security: None, Basic256Sha256 Sign or SignAndEncrypt with certificates (``python -m
edgeflow certs``), optional username/password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asyncua import Client, ua
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition, batch_async
from typing_extensions import override

from connectors.opcua.config import OpcUaInput
from flows.lifecycle import stop_requested
from flows.logs import reveal
from wire.records import DeadLetter, PointBatch, Quality, TagTable, now_ms

__all__ = ["NodeMap", "OpcUaSource", "quality_of"]

log = logging.getLogger(__name__)
Sample = tuple[str, str, int, float, int]  # path, unit, ts_ms, value, quality


@dataclass(frozen=True, slots=True)
class NodeMap:
    """One variable: its node id and where it goes."""

    node_id: str
    path: str  # enterprise/site/area/line/machine/tag
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0


def quality_of(status: Any) -> int:
    """Map an OPC UA status code to edgeflow quality."""
    if status is None or status.is_good():
        return int(Quality.GOOD)
    if status.is_uncertain():
        return int(Quality.UNCERTAIN)
    return int(Quality.BAD)


def _ms(dv: Any) -> int:
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    return int(ts.timestamp() * 1000) if ts is not None else now_ms()


class _Handler:
    def __init__(self, q: asyncio.Queue[Any]) -> None:
        self.q = q

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.q.put_nowait((node.nodeid.to_string(), data.monitored_item.Value))

    def status_change_notification(self, status: Any) -> None:
        self.q.put_nowait(("__status__", status))


class _Partition(StatefulSourcePartition[PointBatch | DeadLetter, None]):
    def __init__(self, src: OpcUaSource) -> None:
        self.src = src
        self.loop = asyncio.new_event_loop()
        self.batcher = batch_async(
            self._stream(), timedelta(milliseconds=100), 10_000, loop=self.loop
        )
        self.table = TagTable()
        self.count = 0
        self.connects = 0

    async def _connect(self) -> Client:
        s = self.src
        client = Client(s.cfg.url, timeout=s.cfg.timeout_s)
        client.session_timeout = 30_000
        if s.cfg.security != "None":
            if not (s.cfg.cert and s.cfg.key):
                msg = "OPC UA security needs cert and key"
                raise ValueError(msg)
            await client.set_security_string(
                f"Basic256Sha256,{s.cfg.security},{s.cfg.cert},{s.cfg.key}"
            )
            client.application_uri = s.cfg.application_uri
        if s.cfg.username:
            client.set_user(s.cfg.username)
            client.set_password(reveal(s.cfg.password) if s.cfg.password else "")
        await client.connect()
        self.connects += 1
        return client

    async def _discover(self, client: Client) -> tuple[list[NodeMap], list[DeadLetter]]:
        nodes = list(self.src.nodes)
        dead: list[DeadLetter] = []
        for root_id in self.src.cfg.browse:
            root = client.get_node(root_id)

            async def walk(node: Any, names: list[str]) -> None:
                for child in await node.get_children():
                    name = (await child.read_browse_name()).Name
                    cls = await child.read_node_class()
                    if cls == ua.NodeClass.Variable and len(names) == 3:
                        path = "/".join((self.src.enterprise, self.src.site, *names, name))
                        nodes.append(NodeMap(child.nodeid.to_string(), path))
                    elif cls == ua.NodeClass.Object and len(names) < 3:
                        await walk(child, [*names, name])

            await walk(root, [])
        good: list[NodeMap] = []
        for n in nodes:
            try:
                await client.get_node(n.node_id).read_node_class()
                good.append(n)
            except (ua.UaStatusCodeError, ValueError) as e:
                dead.append(
                    DeadLetter(
                        "opcua",
                        f"unknown node {n.node_id}: {e}",
                        {"node_id": n.node_id, "path": n.path},
                        source=self.src.cfg.url,
                    )
                )
        return good, dead

    async def _limit(self, client: Client, object_id: int, default: int) -> int:
        try:
            v = await client.get_node(ua.NodeId(object_id)).read_value()
            return int(v) if v else default
        except Exception:  # servers may not expose operation limits
            return default

    def _sample(self, n: NodeMap, dv: Any) -> Sample | None:
        value = dv.Value.Value if dv.Value is not None else None
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float):
            return None
        return (
            n.path,
            n.unit,
            _ms(dv),
            float(value) * n.scale + n.offset,
            quality_of(dv.StatusCode),
        )

    async def _stream(self) -> AsyncIterator[Any]:
        s = self.src
        backoff = 0.5
        reported: set[str] = set()
        while not stop_requested():
            client = None
            try:
                client = await self._connect()
                nodes, dead = await self._discover(client)
                for d in dead:
                    if d.payload["node_id"] not in reported:
                        reported.add(d.payload["node_id"])
                        yield d
                by_id = {client.get_node(n.node_id).nodeid.to_string(): n for n in nodes}
                backoff = 0.5
                if s.cfg.mode == "polling":
                    chunk = await self._limit(
                        client,
                        ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                        500,
                    )
                    objs = [client.get_node(n.node_id) for n in nodes]
                    while not stop_requested():
                        for i in range(0, len(objs), chunk):
                            part = objs[i : i + chunk]
                            dvs = await client.read_attributes(part, ua.AttributeIds.Value)
                            for obj, dv in zip(part, dvs, strict=True):
                                smp = self._sample(by_id[obj.nodeid.to_string()], dv)
                                if smp is not None:
                                    yield smp
                        await asyncio.sleep(s.cfg.interval_ms / 1000)
                else:
                    q: asyncio.Queue[Any] = asyncio.Queue()
                    sub = await client.create_subscription(s.cfg.interval_ms, _Handler(q))
                    chunk = await self._limit(
                        client,
                        ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
                        1000,
                    )
                    objs = [client.get_node(n.node_id) for n in nodes]
                    for i in range(0, len(objs), chunk):
                        part = objs[i : i + chunk]
                        if s.cfg.deadband:
                            await sub.deadband_monitor(
                                part, s.cfg.deadband, queuesize=s.cfg.queue_size
                            )
                        else:
                            await sub.subscribe_data_change(
                                part,
                                queuesize=s.cfg.queue_size,
                                sampling_interval=s.cfg.sampling_interval_ms,
                            )
                    while not stop_requested():
                        try:
                            node_id, dv = await asyncio.wait_for(q.get(), 1.0)
                        except TimeoutError:
                            await client.check_connection()
                            continue
                        if node_id == "__status__":
                            msg = f"subscription status {dv}"
                            raise ConnectionError(msg)
                        smp = self._sample(by_id[node_id], dv) if node_id in by_id else None
                        if smp is not None:
                            yield smp
            except (
                OSError,
                ConnectionError,
                TimeoutError,
                ua.UaError,
                asyncio.CancelledError,
            ) as e:
                log.warning(
                    "opcua %s: %s; reconnecting in %.1f s",
                    s.cfg.url,
                    e or type(e).__name__,
                    backoff,
                )
            finally:
                if client is not None:
                    # The session may already be gone; disconnecting is best effort.
                    with contextlib.suppress(Exception):
                        await client.disconnect()
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)

    @override
    def next_batch(self) -> list[PointBatch | DeadLetter]:
        if stop_requested() or (
            self.src.cfg.max_samples is not None and self.count >= self.src.cfg.max_samples
        ):
            raise StopIteration
        items = next(self.batcher)
        out: list[PointBatch | DeadLetter] = [i for i in items if isinstance(i, DeadLetter)]
        samples = [i for i in items if not isinstance(i, DeadLetter)]
        if self.src.cfg.max_samples is not None:
            samples = samples[: self.src.cfg.max_samples - self.count]
        self.count += len(samples)
        if samples:
            out.insert(0, self.table.batch(samples, source=self.src.cfg.id, received_ms=now_ms()))
        return out

    @override
    def snapshot(self) -> None:
        return None

    @override
    def close(self) -> None:
        self.batcher.close()  # type: ignore[attr-defined]


@dataclass
class OpcUaSource(FixedPartitionedSource[PointBatch | DeadLetter, None]):
    """Read OPC UA variables; see the module docs."""

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
