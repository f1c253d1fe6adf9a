"""A deterministic energy-site simulator: PV inverters, a battery, a grid meter, a load panel.

The physics is simple but consistent, so that operators see plausible data:

- irradiance follows the sun (a bell between 06:00 and 18:00 UTC) times a slow cloud random walk;
- each inverter converts DC to AC with a temperature-derated efficiency; its temperature
  follows its load with a first-order lag; four string currents share the DC power;
- the load panel follows a daily profile with noise;
- the battery charges from PV surplus and discharges into deficits within its power and
  state-of-charge limits; SoC integrates its power;
- the grid meter closes the balance: ``grid = load - pv - battery`` (positive = import).

Faults are injected by kind, asset and time offset; see :data:`FAULT_KINDS`. The same seed,
start time and interval always give the same points, so tests can recompute what a flow saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import ConfigDict

from simulators.errors import SimulatorSetupError
from wire.records import Isa95, PointBatch, Quality, TagRef

__all__ = ["FAULT_KINDS", "EnergySite", "Fault", "FaultKind", "SiteLayout"]

FAULT_KINDS = {
    "soc_drop": "battery SoC falls by 25 points within 3 minutes (cell fault / sensor)",
    "power_spike": "load (and grid import) jumps to 2.5x for the fault duration",
    "efficiency_drop": "inverter efficiency falls by 20%",
    "voltage_sag": "grid voltage falls by 12%",
    "over_temp": "inverter temperature rises by 35 C (cooling failure)",
    "string_fault": "one PV string current halves (imbalance)",
    "stuck_sensor": "the asset's values freeze at their last reading",
    "bad_quality": "the asset reports BAD quality",
    "machine_fault": "the production line's press stops in fault (state 3)",
}


FaultKind = Literal[
    "soc_drop",
    "power_spike",
    "efficiency_drop",
    "voltage_sag",
    "over_temp",
    "string_fault",
    "stuck_sensor",
    "bad_quality",
    "machine_fault",
]


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault of ``kind`` on ``asset`` from ``start_s`` (after sim start) for ``duration_s``."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    kind: FaultKind
    asset: str
    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if self.start_s < 0 or self.duration_s <= 0:
            msg = f"fault {self.kind} on {self.asset}: start_s must be >= 0 and duration_s > 0"
            raise SimulatorSetupError(msg)

    def active(self, t_s: float) -> bool:
        """Return True while the fault is active at ``t_s`` seconds after the simulation start."""
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """Names and ratings of the simulated site."""

    enterprise: str = "acme"
    site: str = "demo-solar"
    inverters: int = 2
    inverter_rated_kw: float = 100.0
    battery_capacity_kwh: float = 200.0
    battery_power_kw: float = 50.0
    load_base_kw: float = 60.0
    nominal_voltage_v: float = 400.0
    #: A small production line: press-01 with state (1 run, 2 idle, 3 fault), a cycle counter
    #: (16 bit, wraps) and a reject counter.
    production_line: bool = False


@dataclass(slots=True)
class _State:
    cloud: float = 0.9
    soc: float = 60.0
    soc_offset: float = 0.0
    inv_temp: list[float] = field(default_factory=list)
    bess_temp: float = 25.0
    frozen: dict[str, list[float]] = field(default_factory=dict)
    line_state: int = 1
    line_progress: float = 0.0
    line_cycles: int = 65_000  # near the top of 16 bits: the counter wraps in the first hour
    line_rejects: int = 0


class EnergySite:
    """Generates one sample of every tag per tick, as a :class:`PointBatch`."""

    def __init__(
        self,
        *,
        layout: SiteLayout | None = None,
        start_ms: int,
        interval_ms: int = 1000,
        seed: int = 42,
        faults: tuple[Fault, ...] = (),
        source: str = "simulator",
    ) -> None:
        self.layout = layout or SiteLayout()
        self.start_ms = start_ms
        self.interval_ms = interval_ms
        self.faults = faults
        self.source = source
        self.tick = 0
        self._rng = np.random.default_rng(seed)
        lay = self.layout
        self._state = _State(inv_temp=[30.0] * lay.inverters)
        refs: list[TagRef] = []
        self._assets: list[tuple[str, int, int]] = []  # asset id, first tag index, tag count

        def add(area: str, line: str, machine: str, tags: list[tuple[str, str]]) -> None:
            ctx = Isa95(lay.enterprise, lay.site, area, line, machine)
            self._assets.append((machine, len(refs), len(tags)))
            refs.extend(TagRef.of(ctx, tag, unit) for tag, unit in tags)

        add("weather", "met", "met-01", [("irradiance", "W/m2"), ("ambient_temperature", "C")])
        for i in range(lay.inverters):
            add(
                "pv",
                f"array-{i + 1}",
                f"inv-{i + 1:02d}",
                [
                    ("ac_power", "kW"),
                    ("dc_power", "kW"),
                    ("efficiency", "%"),
                    ("temperature", "C"),
                    ("dc_voltage", "V"),
                    *[(f"string{s}_current", "A") for s in range(1, 5)],
                ],
            )
        add(
            "storage",
            "bess",
            "bess-01",
            [("soc", "%"), ("power", "kW"), ("voltage", "V"), ("temperature", "C")],
        )
        add("load", "lv-panel", "panel-01", [("active_power", "kW")])
        add(
            "grid",
            "poc",
            "meter-01",
            [
                ("active_power", "kW"),
                ("voltage", "V"),
                ("frequency", "Hz"),
                ("power_factor", ""),
            ],
        )
        if lay.production_line:
            add(
                "production",
                "line-1",
                "press-01",
                [("state", ""), ("cycle_count", ""), ("reject_count", "")],
            )
        # The line draws from its own generator: the energy site's values do not change.
        self._line_rng = np.random.default_rng(seed + 1_000)
        self.tags: tuple[TagRef, ...] = tuple(refs)
        self.assets = tuple(a for a, _, _ in self._assets)
        unknown = {f.asset for f in faults} - set(self.assets)
        bad_kinds = {f.kind for f in faults} - set(FAULT_KINDS)
        if unknown or bad_kinds:
            msg = f"faults name unknown assets {sorted(unknown)} or kinds {sorted(bad_kinds)}"
            raise SimulatorSetupError(msg)

    @property
    def now_ms(self) -> int:
        """Simulated time of the next tick."""
        return self.start_ms + self.tick * self.interval_ms

    def _fault(self, kind: str, asset: str, t_s: float) -> bool:
        return any(f.kind == kind and f.asset == asset and f.active(t_s) for f in self.faults)

    def _values(self, ts_ms: int) -> list[float]:
        lay, st, rng = self.layout, self._state, self._rng
        t_s = (ts_ms - self.start_ms) / 1000.0
        dt_h = self.interval_ms / 3_600_000.0
        hour = (ts_ms / 3_600_000.0) % 24.0
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) ** 1.2 if 6 < hour < 18 else 0.0
        st.cloud = min(1.0, max(0.3, st.cloud + rng.normal(0.0, 0.004)))
        irradiance = 1000.0 * sun * st.cloud
        ambient = 15.0 + 10.0 * sun + rng.normal(0.0, 0.05)
        measured = max(0.0, irradiance + rng.normal(0.0, 2.0)) if irradiance > 0 else 0.0
        vals: list[float] = [measured, ambient]

        pv_total = 0.0
        for i in range(lay.inverters):
            asset = f"inv-{i + 1:02d}"
            dc = lay.inverter_rated_kw * irradiance / 1000.0 * (1.0 + rng.normal(0.0, 0.005))
            dc = max(0.0, dc)
            eff = 0.97 - 0.0006 * max(0.0, st.inv_temp[i] - 40.0)
            if self._fault("efficiency_drop", asset, t_s):
                eff *= 0.8
            ac = dc * eff
            target = ambient + 30.0 * ac / lay.inverter_rated_kw + 5.0
            st.inv_temp[i] += (target - st.inv_temp[i]) * min(1.0, self.interval_ms / 120_000.0)
            temp = st.inv_temp[i] + (35.0 if self._fault("over_temp", asset, t_s) else 0.0)
            dc_v = 600.0 + 50.0 * sun + rng.normal(0.0, 1.0)
            string_a = dc * 1000.0 / dc_v / 4.0
            strings = [max(0.0, string_a * (1.0 + rng.normal(0.0, 0.01))) for _ in range(4)]
            if self._fault("string_fault", asset, t_s):
                strings[0] *= 0.5
            pv_total += ac
            vals += [ac, dc, eff * 100.0 if dc > 0.5 else 0.0, temp, dc_v, *strings]

        load = lay.load_base_kw * (
            1.0 + 0.3 * math.sin(math.pi * (hour - 8.0) / 12.0) ** 2
        ) + rng.normal(0.0, 1.0)
        if self._fault("power_spike", "panel-01", t_s):
            load *= 2.5
        surplus = pv_total - load
        # Battery: positive power = discharge into the site.
        if surplus > 0 and st.soc < 95.0:
            bess_p = -min(surplus, lay.battery_power_kw)
        elif surplus < 0 and st.soc > 20.0:  # keep a 20% reserve
            bess_p = min(-surplus, lay.battery_power_kw)
        else:
            bess_p = 0.0
        st.soc = min(100.0, max(0.0, st.soc - bess_p * dt_h / lay.battery_capacity_kwh * 100.0))
        if self._fault("soc_drop", "bess-01", t_s):
            st.soc_offset = min(25.0, st.soc_offset + 25.0 * self.interval_ms / 180_000.0)
        soc_reported = max(0.0, st.soc - st.soc_offset)
        st.bess_temp += (25.0 + 8.0 * abs(bess_p) / lay.battery_power_kw - st.bess_temp) * 0.01
        bess_v = 760.0 + 0.4 * soc_reported + rng.normal(0.0, 0.3)
        vals += [soc_reported, bess_p, bess_v, st.bess_temp]
        vals += [load]

        # Meters have a little measurement noise: the balance never reads as a flat zero.
        grid = load - pv_total - bess_p + rng.normal(0.0, 0.05)
        voltage = lay.nominal_voltage_v * (1.0 + rng.normal(0.0, 0.003))
        if self._fault("voltage_sag", "meter-01", t_s):
            voltage *= 0.88
        pf = 0.97 + rng.normal(0.0, 0.005)
        vals += [grid, voltage, 50.0 + rng.normal(0.0, 0.01), min(1.0, pf)]
        if lay.production_line:
            vals += self._line(t_s)
        return vals

    def _line(self, t_s: float) -> list[float]:
        """Return the press's samples: it runs (a 7 s cycle, 3% rejects), idles, faults."""
        st, rng, dt_s = self._state, self._line_rng, self.interval_ms / 1000.0
        if self._fault("machine_fault", "press-01", t_s):
            st.line_state = 3
        elif st.line_state == 3 or (st.line_state == 2 and rng.random() < dt_s / 120.0):
            st.line_state = 1
        elif st.line_state == 1 and rng.random() < dt_s / 900.0:
            st.line_state = 2
        if st.line_state == 1:
            st.line_progress += dt_s / 7.0
            while st.line_progress >= 1.0:
                st.line_progress -= 1.0
                st.line_cycles += 1
                st.line_rejects += int(rng.random() < 0.03)
        return [float(st.line_state), float(st.line_cycles % 65_536), float(st.line_rejects)]

    def step(self, ticks: int = 1) -> PointBatch:
        """Advance ``ticks`` ticks and return all their samples as one batch."""
        n_tags = len(self.tags)
        ts = np.empty(ticks * n_tags, np.int64)
        val = np.empty(ticks * n_tags, np.float64)
        qual = np.zeros(ticks * n_tags, np.uint8)
        for k in range(ticks):
            ts_ms = self.now_ms
            t_s = (ts_ms - self.start_ms) / 1000.0
            vals = self._values(ts_ms)
            lo = k * n_tags
            for asset, first, count in self._assets:
                if self._fault("stuck_sensor", asset, t_s):
                    frozen = self._state.frozen.setdefault(asset, vals[first : first + count])
                    vals[first : first + count] = frozen
                else:
                    self._state.frozen.pop(asset, None)
                if self._fault("bad_quality", asset, t_s):
                    qual[lo + first : lo + first + count] = Quality.BAD
            ts[lo : lo + n_tags] = ts_ms
            val[lo : lo + n_tags] = vals
            self.tick += 1
        idx = np.tile(np.arange(n_tags, dtype=np.int32), ticks)
        return PointBatch(
            self.tags, idx, ts, val, qual, source=self.source, received_ms=int(ts[-1])
        )
