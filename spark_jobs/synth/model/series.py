"""The chartevents and labevents rows of one ICU stay, drawn from the admission's latent state
and, near a death, its deterioration."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter

from spark_jobs.synth import items
from spark_jobs.synth.model.simulation import HOUR, Admission, ModelConfig, Patient, Stay, drift


@dataclass
class Rows:
    """Column arrays of event rows (chartevents or labevents) accumulated for a chunk."""

    cols: dict[str, list] = field(default_factory=dict)

    def add(self, **arrays) -> None:
        for key, arr in arrays.items():
            self.cols.setdefault(key, []).append(np.asarray(arr))

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}


def _ar_noise(rng, n: int, sd: float, phi: float = 0.8) -> np.ndarray:
    z = rng.normal(size=n)
    return lfilter([sd * np.sqrt(1 - phi**2)], [1.0, -phi], z)


def _grid(rng, start_h: float, end_h: float, every_h: float, jitter_min: float = 8.0, keep: float = 0.97):
    """Chart times every ``every_h`` hours with jitter; a few planned measurements are skipped."""
    hours = np.arange(start_h, end_h, every_h)
    hours = hours + rng.normal(0, jitter_min / 60.0, size=len(hours))
    return np.sort(hours[rng.random(len(hours)) < keep])


def _fmt(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(values, decimals)


class StaySeries:
    """Builds the chartevents and labevents rows of one stay."""

    def __init__(self, rng, cfg: ModelConfig, patient: Patient, adm: Admission, stay: Stay):
        self.rng, self.cfg, self.q = rng, cfg, cfg.quirks
        self.patient, self.adm, self.stay = patient, adm, stay
        self.los_h = (stay.outtime - stay.intime) / HOUR
        self.lat = adm.latents
        self.onset = float(rng.uniform(12, 48))

    # values in canonical units at given hours
    def _state(self, hours: np.ndarray, name: str) -> np.ndarray:
        rng, lat = self.rng, self.lat
        d = drift(hours, self.stay.death_hours, self.onset)
        n = len(hours)
        if name == "hr":
            return 86 + 9 * lat["sev"] + 4 * lat["card"] + 28 * d + _ar_noise(rng, n, 7)
        if name == "sbp":
            return 118 - 9 * lat["sev"] - 7 * lat["card"] - 32 * d + _ar_noise(rng, n, 11)
        if name == "rr":
            return 19 + 3 * lat["resp"] + 1.5 * lat["sev"] + 8 * d + _ar_noise(rng, n, 2.5)
        if name == "spo2":
            return np.minimum(
                100, 97.5 - 1.8 * lat["resp"] - 0.6 * lat["sev"] - 7 * d + _ar_noise(rng, n, 1.0)
            )
        if name == "temp":
            return 36.9 + 0.45 * lat["sev"] + 0.4 * d + _ar_noise(rng, n, 0.3)
        if name == "glucose":
            return 118 + 70 * lat["diab"] + 10 * lat["sev"] + _ar_noise(rng, n, 22, 0.5)
        if name == "ph":
            return 7.40 - 0.035 * lat["sev"] - 0.03 * lat["resp"] - 0.09 * d + _ar_noise(rng, n, 0.025, 0.5)
        if name == "gcs":
            return 15 - 3.0 * np.maximum(lat["neuro"] + 0.3, 0) - 6 * d + _ar_noise(rng, n, 0.8)
        if name == "fio2":
            return 0.3 + 0.12 * max(lat["resp"], 0) + 0.3 * d + _ar_noise(rng, n, 0.05)
        if name == "crr":
            return 0.6 * lat["sev"] + 2.0 * d + rng.normal(size=n) * 0.7
        raise KeyError(name)

    def chart(self, out: Rows) -> None:
        rng, st = self.rng, self.stay
        start, end = -1.5, self.los_h + 1.5  # a few events fall outside the stay, as in MIMIC
        hourly = _grid(rng, start, end, 1.0)
        self._numeric(out, "hr", hourly, 220045, self._state(hourly, "hr"), 0, "bpm")
        rr = self._state(hourly, "rr")
        self._numeric(out, "rr", hourly, 220210 if rng.random() < 0.8 else 224690, rr, 0, "insp/min")
        self._spo2(out, hourly)
        self._blood_pressure(out, hourly, "nbp", (220179, 220180, 220181))
        if st.ventilated or rng.random() < 0.3:
            art = _grid(rng, start, end, 1.0, keep=0.9)
            self._blood_pressure(out, art, "art", (220050, 220051, 220052))
        self._temperature(out, _grid(rng, start, end, 4.0))
        self._gcs(out, _grid(rng, start, end, 2.0 if self.lat["neuro"] > 0.5 else 4.0))
        if st.ventilated:
            self._fio2(out, _grid(rng, start, end, 3.0))
            gas = _grid(rng, start, end, 6.0)
            self._numeric(out, "ph", gas, 223830, self._state(gas, "ph"), 2, "units")
            self._numeric(out, "spo2", gas, 220227, self._state(gas, "spo2"), 0, "%")
        if rng.random() < 0.5:
            fs = _grid(rng, start, end, 6.0)
            self._numeric(out, "glucose", fs, 225664, self._state(fs, "glucose"), 0, "mg/dL")
        serum = _grid(rng, start, end, 12.0)
        self._numeric(
            out,
            "glucose",
            serum,
            220621 if rng.random() < 0.7 else 226537,
            self._state(serum, "glucose"),
            0,
            "mg/dL",
        )
        if rng.random() < 0.2:
            ven = _grid(rng, start, end, 12.0)
            self._numeric(out, "ph", ven, 220274, self._state(ven, "ph") - 0.04, 2, "units")
        if rng.random() < 0.4:
            self._crr(out, _grid(rng, start, end, 6.0))
        self._weight_height(out)
        for k in range(self.cfg.unused_scale):  # extra copies charted later within the hour
            self._unused_chart(out, hourly + k / self.cfg.unused_scale)

    def labs(self, out: Rows, counter: list[int]) -> None:
        rng = self.rng
        start, end = -12.0, self.los_h + 6.0  # labs drawn before the ICU and after it, too
        draws = _grid(rng, start, end, 6.0 if self.stay.ventilated else 12.0)
        self._lab(out, counter, draws, items.LAB_ITEMS["glucose_chem"], self._state(draws, "glucose"), 0)
        if self.stay.ventilated:
            self._lab(out, counter, draws, items.LAB_ITEMS["ph_bg"], self._state(draws, "ph"), 2)
            self._lab(out, counter, draws, items.LAB_ITEMS["spo2_bg"], self._state(draws, "spo2"), 0)
            self._lab(out, counter, draws, items.LAB_ITEMS["glucose_bg"], self._state(draws, "glucose"), 0)
        if rng.random() < 0.1:
            other = _grid(rng, start, end, 24.0)
            self._lab(out, counter, other, items.LAB_ITEMS["ph_other"], self._state(other, "ph"), 2)
        urine = _grid(rng, start, end, 24.0, keep=0.6)
        self._lab(out, counter, urine, items.LAB_ITEMS["ph_urine"], rng.uniform(5.0, 7.5, len(urine)), 1)
        self._lab_text(out, counter, urine, items.LAB_ITEMS["glucose_urine"], "NEG")
        for k in range(self.cfg.unused_scale):
            for item in items.OTHER_LAB_ITEMS:
                at = draws + k / self.cfg.unused_scale
                self._lab(out, counter, at, item, rng.normal(10, 3, len(draws)).clip(0.1), 1)

    # -- chart helpers ----------------------------------------------------------------------------
    def _emit(self, out: Rows, hours, itemid, value, valuenum, uom) -> None:
        rng, st = self.rng, self.stay
        n = len(hours)
        if n == 0:
            return
        charttime = st.intime + np.round(np.asarray(hours) * HOUR).astype(np.int64)
        charttime = charttime - charttime % 60  # MIMIC charttimes are on the minute
        storetime = charttime + rng.integers(0, 3600, n)
        out.add(
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=np.full(n, self.adm.hadm_id),
            stay_id=np.full(n, st.stay_id),
            caregiver_id=rng.integers(1000, 99999, n),
            charttime=charttime,
            storetime=storetime,
            itemid=np.full(n, itemid),
            value=np.asarray(value, dtype=object),
            valuenum=np.asarray(valuenum, dtype=float),
            valueuom=np.full(n, uom, dtype=object),
            warning=np.zeros(n, dtype=np.int64),
        )
        self._duplicates(out, charttime, itemid, value, valuenum, uom)

    def _duplicates(self, out: Rows, charttime, itemid, value, valuenum, uom) -> None:
        rng = self.rng
        dup = np.flatnonzero(rng.random(len(charttime)) < self.q.duplicate)
        if len(dup) == 0:
            return
        n = len(dup)
        vn = np.asarray(valuenum, dtype=float)[dup]
        val = np.asarray(value, dtype=object)[dup]
        # A numeric reading is re-charted slightly differently; text items (GCS, CRR) are repeated as is.
        numeric = val == _num_text(vn)
        vn = np.where(numeric, np.round(vn * rng.uniform(0.97, 1.03, n), 2), vn)
        val = np.where(numeric, _num_text(vn), val)
        out.add(
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=np.full(n, self.adm.hadm_id),
            stay_id=np.full(n, self.stay.stay_id),
            caregiver_id=rng.integers(1000, 99999, n),
            charttime=charttime[dup],
            storetime=charttime[dup] + 3600 + rng.integers(0, 3600, n),
            itemid=np.full(n, itemid),
            value=val.astype(object),
            valuenum=vn,
            valueuom=np.full(n, uom, dtype=object),
            warning=np.zeros(n, dtype=np.int64),
        )

    def _numeric(self, out: Rows, kind: str, hours, itemid, values, decimals, uom) -> None:
        rng = self.rng
        v = _fmt(np.asarray(values, dtype=float), decimals)
        bad = rng.random(len(v)) < self.q.impossible
        v[bad] = np.round(v[bad] * rng.choice([10.0, -1.0, 0.0], bad.sum()), decimals)
        text = _num_text(v)
        if kind == "glucose":
            nn = rng.random(len(v)) < self.q.non_numeric
            text[nn] = rng.choice(["ERROR", "NotDone", "___"], nn.sum())
            v[nn] = np.nan
        self._emit(out, hours, itemid, text, v, uom)

    def _spo2(self, out: Rows, hours) -> None:
        v = np.round(self._state(hours, "spo2"))
        frac = self.rng.random(len(v)) < self.q.spo2_fraction
        v[frac] = v[frac] / 100.0
        self._emit(out, hours, 220277, _num_text(v), v, "%")

    def _blood_pressure(self, out: Rows, hours, kind: str, itemids) -> None:
        rng = self.rng
        sbp = np.round(self._state(hours, "sbp"))
        dbp = np.round(0.55 * sbp + 2 + rng.normal(0, 4, len(hours)))
        mbp = np.round((sbp + 2 * dbp) / 3 + rng.normal(0, 2, len(hours)))
        s_text = _num_text(sbp)
        if kind == "nbp":  # "a/b" strings: the reference cleaner splits them
            ab = rng.random(len(sbp)) < self.q.bp_string
            s_text[ab] = [f"{int(a)}/{int(b)}" for a, b in zip(sbp[ab], dbp[ab])]
            sbp = sbp.copy()
            sbp[ab] = np.nan
        self._emit(out, hours, itemids[0], s_text, sbp, "mmHg")
        self._numeric(out, "dbp", hours, itemids[1], dbp, 0, "mmHg")
        self._numeric(out, "mbp", hours, itemids[2], mbp, 0, "mmHg")

    def _temperature(self, out: Rows, hours) -> None:
        c = self._state(hours, "temp")
        in_f = self.rng.random(len(hours)) < 0.8
        if in_f.any():
            self._numeric(out, "temp", hours[in_f], 223761, c[in_f] * 9 / 5 + 32, 1, "°F")
        if (~in_f).any():
            self._numeric(out, "temp", hours[~in_f], 223762, c[~in_f], 1, "°C")

    def _fio2(self, out: Rows, hours) -> None:
        frac = np.clip(self._state(hours, "fio2"), 0.21, 1.0)
        pct = np.round(frac * 100 / 5) * 5  # MIMIC-IV charts FiO2 in percent, in steps
        as_fraction = self.rng.random(len(pct)) < 0.01
        pct[as_fraction] = pct[as_fraction] / 100.0
        self._emit(out, hours, 223835, _num_text(pct), pct, None)

    def _gcs(self, out: Rows, hours) -> None:
        rng = self.rng
        total = np.clip(np.round(self._state(hours, "gcs")), 3, 15).astype(int)
        eye = np.clip(np.round(total * 4 / 15 + rng.normal(0, 0.4, len(total))), 1, 4).astype(int)
        motor = np.clip(np.round(total * 6 / 15 + rng.normal(0, 0.4, len(total))), 1, 6).astype(int)
        verbal = np.clip(total - eye - motor, 1, 5).astype(int)
        keep = [rng.random(len(total)) > 0.05 for _ in range(3)]
        eye_t = np.array([items.GCS_EYE[v] for v in eye], dtype=object)
        motor_t = np.array([items.GCS_MOTOR[v] for v in motor], dtype=object)
        verbal_t = np.array([items.GCS_VERBAL[v] for v in verbal], dtype=object)
        if self.stay.ventilated:
            verbal_t[:] = items.GCS_VERBAL_INTUBATED
            verbal = np.ones_like(verbal)
        for (text, score, itemid), k in zip(
            ((eye_t, eye, 220739), (verbal_t, verbal, 223900), (motor_t, motor, 223901)), keep
        ):
            self._emit(out, hours[k], itemid, text[k], score[k].astype(float), None)

    def _crr(self, out: Rows, hours) -> None:
        abnormal = self._state(hours, "crr") > 1.0
        text = np.where(abnormal, items.CRR_ABNORMAL, items.CRR_NORMAL).astype(object)
        self._emit(
            out, hours, 223951 if self.rng.random() < 0.5 else 224308, text, np.full(len(hours), np.nan), None
        )

    def _weight_height(self, out: Rows) -> None:
        rng = self.rng
        kg = float(np.clip(rng.normal(81, 18), 35, 200))
        first = np.array([rng.uniform(0, 2)])
        self._either_unit(out, "weight", first, 0.7, 1, (226512, kg, "kg"), (226531, kg / 0.453592, "lbs"))
        if rng.random() < 0.5 and self.los_h > 24:
            daily = np.arange(24.0, self.los_h, 24.0)
            self._numeric(out, "weight", daily, 224639, kg + rng.normal(0, 1.5, len(daily)), 1, "kg")
        if rng.random() < 0.6:
            cm = float(np.clip(rng.normal(170, 10), 140, 205))
            at = np.array([rng.uniform(0, 4)])
            self._either_unit(out, "height", at, 0.5, 0, (226730, cm, "cm"), (226707, cm / 2.54, "Inch"))

    def _either_unit(self, out: Rows, kind: str, at, p_first: float, decimals: int, first, second) -> None:
        """One measurement charted under one of two items (ICUs chart it in different units):
        ``first`` / ``second`` are (itemid, value, uom), ``first`` with probability ``p_first``."""
        itemid, value, uom = first if self.rng.random() < p_first else second
        self._numeric(out, kind, at, itemid, [value], decimals, uom)

    def _unused_chart(self, out: Rows, hourly) -> None:
        rng = self.rng
        n = len(hourly)
        self._emit(
            out, hourly, 220048, np.full(n, "SR (Sinus Rhythm)", dtype=object), np.full(n, np.nan), None
        )
        self._emit(out, hourly, 224641, np.full(n, "Yes", dtype=object), np.full(n, np.nan), None)
        every4 = hourly[::4]
        for item, level, uom in (
            (220046, 120.0, "bpm"),
            (220047, 50.0, "bpm"),
            (223769, 100.0, "%"),
            (223770, 90.0, "%"),
        ):
            v = np.full(len(every4), level)
            self._emit(out, every4, item, _num_text(v), v, uom)
        rass = rng.integers(-3, 2, len(every4))
        self._emit(
            out, every4, 228096, np.array([f"{r} " for r in rass], dtype=object), rass.astype(float), None
        )

    # -- lab helpers ------------------------------------------------------------------------------
    def _lab(self, out: Rows, counter: list[int], hours, item: items.LabItem, values, decimals) -> None:
        rng = self.rng
        v = _fmt(np.asarray(values, dtype=float), decimals)
        text = _num_text(v)
        if item.itemid in (50820, 50831):
            nn = rng.random(len(v)) < self.q.non_numeric
            text[nn] = "HEMOLYZED"
            v[nn] = np.nan
        self._lab_rows(out, counter, hours, item, text, v)

    def _lab_text(self, out: Rows, counter: list[int], hours, item: items.LabItem, text: str) -> None:
        n = len(hours)
        self._lab_rows(out, counter, hours, item, np.full(n, text, dtype=object), np.full(n, np.nan))

    def _lab_rows(self, out: Rows, counter: list[int], hours, item: items.LabItem, text, valuenum) -> None:
        rng, st = self.rng, self.stay
        n = len(hours)
        if n == 0:
            return
        charttime = st.intime + np.round(np.asarray(hours) * HOUR).astype(np.int64)
        charttime -= charttime % 60
        ids = np.arange(counter[0], counter[0] + n)
        counter[0] += n
        hadm = np.where(rng.random(n) < self.q.lab_null_hadm, -1, self.adm.hadm_id)
        out.add(
            labevent_id=self.patient.index * 1_000_000 + ids,
            subject_id=np.full(n, self.patient.subject_id),
            hadm_id=hadm,
            specimen_id=self.patient.index * 1_000_000 + 500_000 + ids,
            itemid=np.full(n, item.itemid),
            order_provider_id=np.full(n, None, dtype=object),
            charttime=charttime,
            storetime=charttime + rng.integers(1800, 4 * 3600, n),
            value=np.asarray(text, dtype=object),
            valuenum=np.asarray(valuenum, dtype=float),
            valueuom=np.full(n, item.unit, dtype=object),
            ref_range_lower=np.full(n, np.nan),
            ref_range_upper=np.full(n, np.nan),
            flag=np.full(n, None, dtype=object),
            priority=np.full(n, "ROUTINE", dtype=object),
            comments=np.full(n, None, dtype=object),
        )


def _num_text(values: np.ndarray) -> np.ndarray:
    """Numbers as MIMIC writes them in ``value``: no trailing zeros, empty for NaN."""
    return np.array(
        ["" if np.isnan(v) else f"{v:.10g}" for v in np.asarray(values, dtype=float)], dtype=object
    )
