"""Publish the simulated energy site over MQTT: plain JSON topics or Sparkplug B.

``edgeflow sim mqtt --port 1883 [--sparkplug]`` publishes every tag each
second until Ctrl-C. Plain mode: ``plant/{area}/{line}/{machine}/{tag}`` with
``{"value": .., "ts_ms": ..}``. Sparkplug mode: group ``demo``, edge node ``site-gw``, one device
per asset (DBIRTH with aliases, then DDATA by alias), answering rebirth requests.
"""

from __future__ import annotations

import argparse
import json
import threading

import paho.mqtt.client as mqtt

from simulators.site import EnergySite
from wire.records import PointBatch, now_ms
from wire.sparkplug.codec import decode, encode

__all__ = ["SitePublisher"]


class SitePublisher:
    """Publishes one tick of the site per :meth:`publish_tick` call."""

    def __init__(
        self,
        site: EnergySite,
        host: str,
        port: int,
        *,
        sparkplug: bool = False,
        group: str = "demo",
        node: str = "site-gw",
    ) -> None:
        self.site, self.sparkplug, self.group, self.node = site, sparkplug, group, node
        self.seq = 0
        self.born = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=f"sim-{node}",
        )
        if sparkplug:
            death = encode([("bdSeq", None, "UInt64", 0)], seq=None, timestamp=now_ms())
            self.client.will_set(f"spBv1.0/{group}/NDEATH/{node}", death, qos=1)
            self.client.on_message = self._on_cmd
        self.client.connect(host, port)
        if sparkplug:
            self.client.subscribe(f"spBv1.0/{group}/NCMD/{node}", qos=1)
        self.client.loop_start()
        self.lock = threading.Lock()

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def _on_cmd(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if any(
            m.name == "Node Control/Rebirth" and m.value is True
            for m in decode(bytes(msg.payload)).metrics
        ):
            with self.lock:
                self.born = False

    def _births(self, batch: PointBatch) -> None:
        self.seq = 0
        ts = int(batch.ts_ms[0])
        self.client.publish(
            f"spBv1.0/{self.group}/NBIRTH/{self.node}",
            encode([("bdSeq", None, "UInt64", 0)], seq=self._next_seq(), timestamp=ts),
            qos=1,
        )
        for device, metrics in self._by_device(batch).items():
            self.client.publish(
                f"spBv1.0/{self.group}/DBIRTH/{self.node}/{device}",
                encode(
                    [(name, alias, "Double", v) for name, alias, v in metrics],
                    seq=self._next_seq(),
                    timestamp=ts,
                ),
                qos=1,
            )
        self.born = True

    def _by_device(self, batch: PointBatch) -> dict[str, list[tuple[str, int, float]]]:
        out: dict[str, list[tuple[str, int, float]]] = {}
        for i, v in zip(batch.tag_idx.tolist(), batch.value.tolist(), strict=True):
            ref = batch.tags[i]
            parts = ref.path.split("/")
            out.setdefault(parts[4], []).append((parts[5], i + 1, v))
        return out

    def publish_tick(self) -> int:
        """Step the site one tick and publish it; returns the number of messages."""
        batch = self.site.step(1)
        ts = int(batch.ts_ms[0])
        infos = []
        with self.lock:
            if self.sparkplug:
                if not self.born:
                    # Births carry this tick's values; sending DDATA too would duplicate them.
                    self._births(batch)
                    return 1 + len(self._by_device(batch))
                for device, metrics in self._by_device(batch).items():
                    payload = encode(
                        [(None, alias, "Double", v) for _, alias, v in metrics],
                        seq=self._next_seq(),
                        timestamp=ts,
                    )
                    infos.append(
                        self.client.publish(
                            f"spBv1.0/{self.group}/DDATA/{self.node}/{device}", payload, qos=1
                        )
                    )
            else:
                for i, v in zip(batch.tag_idx.tolist(), batch.value.tolist(), strict=True):
                    parts = batch.tags[i].path.split("/")
                    topic = "plant/" + "/".join(parts[2:])
                    infos.append(
                        self.client.publish(topic, json.dumps({"value": v, "ts_ms": ts}), qos=1)
                    )
        for info in infos:
            info.wait_for_publish(10)
        return len(infos)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    """Publish until interrupted."""
    import time

    p = argparse.ArgumentParser(prog="edgeflow sim mqtt", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--sparkplug", action="store_true")
    a = p.parse_args(argv)
    site = EnergySite(start_ms=now_ms() - now_ms() % 1000)
    pub = SitePublisher(site, a.host, a.port, sparkplug=a.sparkplug)
    print(f"publishing to {a.host}:{a.port} ({'sparkplug' if a.sparkplug else 'json'}); Ctrl-C")
    try:
        while True:
            pub.publish_tick()
            time.sleep(max(0.0, (site.now_ms - now_ms()) / 1000))
    except KeyboardInterrupt:
        pub.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
