"""Site KPIs computed from closed window aggregates.

Per window (of ``window_ms``) and shard (the site by default; with a finer ``shard`` in the
site config the KPIs are per area, line or machine and carry that path):

- ``performance_ratio``: AC energy / (rated kW x plane-of-array irradiation in kWh/m2), only
  when the mean irradiance is at least ``min_irradiance_w_m2``;
- ``renewable_share``: PV energy / load energy, clipped to [0, 1];
- ``power_factor``: the time-weighted mean of the meter's power-factor tag;
- ``battery_round_trip_efficiency``: cumulative discharged / charged energy since start (each
  window's net battery energy counts as charge or discharge by its sign), given when the
  window is final, from its last revision: a window counts once whatever its revisions;
- ``string_imbalance`` per inverter: ``max |I_s - mean| / mean`` over its string currents,
  when the mean current is at least ``min_string_current_a``. Crossing ``imbalance_threshold``
  raises an event, which clears when the imbalance falls below 80% of the threshold; events
  are decided on final windows in window order (see :class:`operators._state.WindowSequencer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from operators._state import tag_matches
from operators.kpi.config import KpiOp
from wire.records import Event, Kpi, WindowAggregates, shard_of

__all__ = ["KpiCalculator"]

_MS_PER_HOUR = 3_600_000.0


class KpiCalculator:
    """Turns closed windows into KPIs and imbalance events; keeps cumulative battery energy.

    A :class:`~operators._state.WindowEngine`: ``window`` gives each window's own KPIs,
    ``settle`` the cumulative efficiency and the imbalance events.
    """

    def __init__(self, config: KpiOp, *, levels: int = 2) -> None:
        self.config = config
        self.levels = levels
        self.charged_kwh = 0.0
        self.discharged_kwh = 0.0
        self._imbalanced: set[str] = set()

    def _sum_energy(self, w: WindowAggregates, pattern: str) -> tuple[float, int]:
        idx = [i for i, t in enumerate(w.tags) if tag_matches(pattern, t)]
        return float(w.integral[idx].sum()) / _MS_PER_HOUR if idx else 0.0, len(idx)

    def window(self, w: WindowAggregates) -> tuple[list[Kpi], list[Event]]:
        """Compute the KPIs of one window that depend on it alone."""
        c = self.config
        if w.window_ms != c.window_ms or not len(w):
            return [], []
        site_path = shard_of(w.tags[0].path, self.levels)
        kpis: list[Kpi] = []

        def kpi(name: str, value: float, unit: str = "", path: str = site_path, **d: Any) -> None:
            kpis.append(Kpi(path, name, w.window_ms, w.start_ms, float(value), unit, d))

        e_pv, n_pv = self._sum_energy(w, c.pv_power)
        irr = [i for i, t in enumerate(w.tags) if tag_matches(c.irradiance, t)]
        if n_pv and irr:
            mean_irr = float(w.twa[irr].mean())
            irradiation_kwh_m2 = float(w.integral[irr].mean()) / _MS_PER_HOUR / 1000.0
            if mean_irr >= c.min_irradiance_w_m2 and irradiation_kwh_m2 > 0:
                pr = e_pv / (c.rated_kw * irradiation_kwh_m2)
                kpi("performance_ratio", pr, "", ac_kwh=e_pv, irradiation_kwh_m2=irradiation_kwh_m2)
        e_load, n_load = self._sum_energy(w, c.load_power)
        if n_pv and n_load and e_load > 0:
            kpi("renewable_share", min(1.0, max(0.0, e_pv / e_load)), "", pv_kwh=e_pv)
        for i, t in enumerate(w.tags):
            if tag_matches(c.power_factor, t):
                kpi("power_factor", float(w.twa[i]), "", path=t.path.rsplit("/", 1)[0])
        for machine, currents, imbalance in self._imbalances(w):
            kpi("string_imbalance", imbalance, "", path=machine, currents_a=currents)
        return kpis, []

    def settle(self, w: WindowAggregates) -> tuple[list[Kpi], list[Event]]:
        """Count a final window's battery energy; raise or clear imbalance events."""
        c = self.config
        if w.window_ms != c.window_ms or not len(w):
            return [], []
        kpis: list[Kpi] = []
        events: list[Event] = []
        e_bat, n_bat = self._sum_energy(w, c.battery_power)
        if n_bat:
            if e_bat > 0:
                self.discharged_kwh += e_bat
            else:
                self.charged_kwh -= e_bat
            if self.charged_kwh > 0:
                kpis.append(
                    Kpi(
                        shard_of(w.tags[0].path, self.levels),
                        "battery_round_trip_efficiency",
                        w.window_ms,
                        w.start_ms,
                        self.discharged_kwh / self.charged_kwh,
                        "",
                        {"charged_kwh": self.charged_kwh, "discharged_kwh": self.discharged_kwh},
                    )
                )
        for machine, _currents, imbalance in self._imbalances(w):
            was = machine in self._imbalanced
            if not was and imbalance > c.imbalance_threshold:
                self._imbalanced.add(machine)
                events.append(self._event(machine, w, imbalance, raised=True))
            elif was and imbalance < 0.8 * c.imbalance_threshold:
                self._imbalanced.discard(machine)
                events.append(self._event(machine, w, imbalance, raised=False))
        return kpis, events

    def _imbalances(self, w: WindowAggregates) -> list[tuple[str, list[float], float]]:
        """``(machine, string currents, imbalance)`` of each machine with enough current."""
        c = self.config
        strings: dict[str, list[float]] = {}
        for i, t in enumerate(w.tags):
            if tag_matches(c.string_currents, t):
                strings.setdefault(t.path.rsplit("/", 1)[0], []).append(float(w.mean[i]))
        out = []
        for machine, currents in sorted(strings.items()):
            arr = np.asarray(currents)
            mean = float(arr.mean())
            if len(arr) < 2 or mean < c.min_string_current_a:
                continue
            out.append((machine, currents, float(np.abs(arr - mean).max() / mean)))
        return out

    def _event(self, machine: str, w: WindowAggregates, imbalance: float, *, raised: bool) -> Event:
        c = self.config
        return Event(
            kind="kpi",
            rule="string_imbalance",
            path=machine,
            ts_ms=w.start_ms + w.window_ms,
            severity="warning",
            state="raised" if raised else "cleared",
            message=(
                f"string currents deviate {imbalance:.0%} from their mean "
                f"(limit {c.imbalance_threshold:.0%})"
            ),
            details={"imbalance": imbalance, "window_start_ms": w.start_ms},
        )
