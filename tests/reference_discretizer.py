"""A deliberately plain, independent discretizer written from SPEC §4, to check the Spark one.

It shares no code with ``spark_jobs/timeseries.py``: it reads the channel config JSON itself and
walks bins and events with ordinary loops, so that a mistake in the vectorized version cannot hide
behind the same mistake here.

Rules (SPEC §4 plus the documented tie-break of the engine):
- n = int(T / ts + 1 - 1e-6) bins; an event at hour t (0 <= t <= T) goes to bin int(t / ts - 1e-6).
- Per bin and channel the last value wins; events are taken in order of hours, then itemid, then
  the category's position in its list (categorical) or the value (continuous).
- A categorical value that is not in the list (also not numerically equal to a numeric category,
  e.g. "15.0" for "15") is missing; a continuous event without a finite number is missing.
- Missing bins repeat the last observed value; before the first one, the normal value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "spark_jobs" / "resources" / "discretizer_config.json"


def load_config(path: Path = CONFIG) -> dict:
    with open(path) as fh:
        return json.load(fh)


def header(config: dict) -> list[str]:
    names = []
    for channel in config["id_to_channel"]:
        if config["is_categorical_channel"][channel]:
            for value in config["possible_values"][channel]:
                names.append(channel + "->" + value)
        else:
            names.append(channel)
    for channel in config["id_to_channel"]:
        names.append("mask->" + channel)
    return names


def category_index(config: dict, channel: str, value) -> int | None:
    """Position of ``value`` in the channel's list, or None when it is not there."""
    if value is None:
        return None
    options = config["possible_values"][channel]
    text = str(value).strip()
    if text in options:
        return options.index(text)
    try:
        number = float(text)
    except ValueError:
        return None
    for i, option in enumerate(options):
        try:
            if float(option) == number:
                return i
        except ValueError:
            pass
    return None


def discretize(events: list[dict], end_hours: float, timestep: float = 1.0, config: dict | None = None):
    """``events``: dicts with hours, variable, value, valuenum, itemid. Returns a list of rows."""
    if config is None:
        config = load_config()
    channel_list = config["id_to_channel"]
    n = int(end_hours / timestep + 1.0 - 1e-6)
    if n <= 0:
        return []

    # 1. keep the usable events of the window, each with its sort key
    usable = []
    for e in events:
        t = e["hours"]
        channel = e["variable"]
        if t is None or t < 0 or t > end_hours or channel not in channel_list:
            continue
        if config["is_categorical_channel"][channel]:
            idx = category_index(config, channel, e["value"])
            if idx is None:
                continue
            stored = idx
            rank = float(idx)
        else:
            v = e["valuenum"]
            if v is None or math.isnan(v) or math.isinf(v):
                continue
            stored = float(v)
            rank = float(v)
        itemid = e.get("itemid") or 0
        usable.append((t, itemid, rank, channel, stored))
    usable.sort(key=lambda u: (u[0], u[1], u[2]))

    # 2. last value per bin and channel
    observed = [dict() for _ in range(n)]
    for t, _itemid, _rank, channel, stored in usable:
        b = int(t / timestep - 1e-6)
        observed[b][channel] = stored

    # 3. walk the bins, imputing with the previous value or the normal value
    previous = {}
    for channel in channel_list:
        normal = config["normal_values"][channel]
        if config["is_categorical_channel"][channel]:
            previous[channel] = config["possible_values"][channel].index(normal)
        else:
            previous[channel] = float(normal)
    rows = []
    for b in range(n):
        row = []
        masks = []
        for channel in channel_list:
            if channel in observed[b]:
                previous[channel] = observed[b][channel]
                masks.append(1.0)
            else:
                masks.append(0.0)
            value = previous[channel]
            if config["is_categorical_channel"][channel]:
                one_hot = [0.0] * len(config["possible_values"][channel])
                one_hot[value] = 1.0
                row.extend(one_hot)
            else:
                row.append(value)
        rows.append(row + masks)
    return rows
