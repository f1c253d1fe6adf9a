"""Where the sun stands: its elevation at a place and time, for day/night gating of rules.

NOAA's general solar position equations (fractional year, equation of time, declination, hour
angle); within about half a degree of NREL's SPA, which is enough to tell day from night or
dawn from morning. Vectorised over times; no refraction correction.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["sun_elevation_deg"]

_DAY_MS = 86_400_000


def sun_elevation_deg(
    ts_ms: npt.NDArray[np.int64], latitude: float, longitude: float
) -> npt.NDArray[np.float64]:
    """Return the sun's elevation above the horizon in degrees at each UTC time (epoch ms)."""
    t = np.asarray(ts_ms, np.int64)
    day = t // _DAY_MS
    year = t.astype("datetime64[ms]").astype("datetime64[Y]")
    first = year.astype("datetime64[D]").astype(np.int64)
    days_in_year = (year + 1).astype("datetime64[D]").astype(np.int64) - first
    minutes = (t - day * _DAY_MS) / 60_000.0
    g = 2 * np.pi / days_in_year * (day - first + (minutes / 60.0 - 12) / 24)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * np.cos(g)
        - 0.032077 * np.sin(g)
        - 0.014615 * np.cos(2 * g)
        - 0.040849 * np.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * np.cos(g)
        + 0.070257 * np.sin(g)
        - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g)
        - 0.002697 * np.cos(3 * g)
        + 0.00148 * np.sin(3 * g)
    )
    hour_angle = np.radians((minutes + eqtime + 4 * longitude) / 4 - 180)
    lat = np.radians(latitude)
    cos_zenith = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    return np.asarray(90 - np.degrees(np.arccos(np.clip(cos_zenith, -1, 1))), np.float64)
