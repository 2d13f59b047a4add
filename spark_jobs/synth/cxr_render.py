"""Synthetic chest radiographs: the image half of the MIMIC-CXR stand-in.

MIMIC-CXR is credentialed, so the synthetic generator renders its own images: a cheap procedural
radiograph (white = dense) with soft tissue, two dark lung fields, the mediastinum and heart between
them, spine, clavicles, rib arcs, diaphragm domes, exposure changes and quantum noise. Findings are
drawn on top, visibly and with a strength that grows with their severity, so that a model trained
on the synthetic set has a real image signal to find.

The picture is a function of (findings, seed, long_side, view) alone. Each concern draws from its
own ``default_rng([seed, stream])``: the anatomy and the noise of a seed stay the same whatever the
findings, and one finding's random placement does not move when another finding is added.

Coordinates are "body units": origin at mid-chest, x towards the image right (the patient's left
in a frontal view), y downwards; the short side of the frame spans about two units. The smooth
anatomy is computed at half resolution and upsampled (which is also the slight blur a detector
gives); thin devices and fine noise are added at full resolution.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["FINDINGS", "encode_jpeg", "image_shape", "render_cxr"]

FINDINGS = (
    "cardiomegaly",
    "effusion",
    "consolidation",
    "edema",
    "pneumothorax",
    "atelectasis",
    "lung_lesion",
    "fracture",
    "support_devices",
)

_VIEW_ALIASES = {"AP": "AP", "PA": "PA", "LATERAL": "LATERAL", "LL": "LATERAL"}
_STREAM_ANATOMY = 0
_STREAM_NOISE = 1
_STREAM_FIRST_FINDING = 2
_MIN_LONG_SIDE = 32
_RIB_COUNT = 10
_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def render_cxr(
    findings: Mapping[str, float], seed: int, long_side: int = 512, view: str = "AP"
) -> np.ndarray:
    """A synthetic radiograph as a uint8 (H, W) array; max(H, W) == long_side.

    ``findings`` maps names from :data:`FINDINGS` to a severity in [0, 1] (0 or missing: absent).
    ``view`` is AP, PA or LATERAL (LL is taken as LATERAL). Same arguments, same bytes.
    """
    severities = _checked_severities(findings)
    view_name = _checked_view(view)
    _check_seed_and_size(seed, long_side)
    rngs = {name: np.random.default_rng([seed, _STREAM_FIRST_FINDING + i]) for i, name in enumerate(FINDINGS)}
    anatomy_rng = np.random.default_rng([seed, _STREAM_ANATOMY])
    height, width = _frame_shape(anatomy_rng, long_side)
    pose = _draw_pose(anatomy_rng, height, width)
    anatomy = _with_structural_findings(_draw_anatomy(anatomy_rng, view_name), severities, rngs)
    grid = _work_grid(pose, long_side)
    layers = _anatomy_layers(grid, anatomy, anatomy_rng)
    for name, draw_finding in _DENSITY_FINDINGS.items():
        if severities[name] > 0:
            draw_finding(layers, grid, anatomy, severities[name], rngs[name])
    noise_rng = np.random.default_rng([seed, _STREAM_NOISE])
    image = _full_resolution(_exposed(layers, grid, anatomy, noise_rng), height, width)
    image += _F32(anatomy.fine_noise) * noise_rng.standard_normal((height, width), dtype=np.float32)
    image = np.clip(image, 0, 1)
    if severities["support_devices"] > 0:
        devices = _devices_layer(pose, anatomy, severities["support_devices"], rngs["support_devices"])
        image += (1 - image) * devices  # metal: towards white whatever lies behind it
    return (image * 255 + 0.5).astype(np.uint8)


def image_shape(seed: int, long_side: int = 512) -> tuple[int, int]:
    """(H, W) that :func:`render_cxr` gives for ``seed`` — without rendering (for metadata)."""
    _check_seed_and_size(seed, long_side)
    return _frame_shape(np.random.default_rng([seed, _STREAM_ANATOMY]), long_side)


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG bytes of a uint8 grayscale image: no EXIF, no timestamps, not optimised."""
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {arr.dtype} with shape {arr.shape}")
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _checked_severities(findings: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown findings {unknown}; expected names from {FINDINGS}")
    severities = {name: float(findings.get(name, 0.0)) for name in FINDINGS}
    for name, severity in severities.items():
        if not 0.0 <= severity <= 1.0:  # also rejects NaN
            raise ValueError(f"severity of {name} must be in [0, 1], got {severity}")
    return severities


def _checked_view(view: str) -> str:
    name = _VIEW_ALIASES.get(str(view).strip().upper())
    if name is None:
        raise ValueError(f"unknown view {view!r}; expected one of {sorted(_VIEW_ALIASES)}")
    return name


def _is_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_seed_and_size(seed: int, long_side: int) -> None:
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_integer(long_side) or long_side < _MIN_LONG_SIDE:
        raise ValueError(f"long_side must be an integer >= {_MIN_LONG_SIDE}, got {long_side!r}")


# ---------------------------------------------------------------------------------------------
# Frame, pose and the coordinate grid
# ---------------------------------------------------------------------------------------------


def _frame_shape(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(height, width) with H/W log-uniform in [0.8, 1.25]: detectors and crops vary."""
    ratio = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    if ratio >= 1:
        return long_side, max(1, round(long_side / ratio))
    return max(1, round(long_side * ratio)), long_side


@dataclass(frozen=True)
class _Pose:
    """Where the patient sits in the frame: rotation, shift and size."""

    height: int
    width: int
    units_per_px: float  # body units per full-resolution pixel
    cos: float
    sin: float
    shift_x: float
    shift_y: float

    def body_coords(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = ((cols - self.width / 2) * self.units_per_px)[None, :]
        v = ((rows - self.height / 2) * self.units_per_px)[:, None]
        return self.cos * u + self.sin * v - self.shift_x, self.cos * v - self.sin * u - self.shift_y

    def pixel_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bx, by = x + self.shift_x, y + self.shift_y
        u, v = self.cos * bx - self.sin * by, self.sin * bx + self.cos * by
        return u / self.units_per_px + self.width / 2, v / self.units_per_px + self.height / 2


def _draw_pose(rng: np.random.Generator, height: int, width: int) -> _Pose:
    angle = math.radians(rng.uniform(-3.5, 3.5))
    zoom = rng.uniform(0.9, 1.04)
    # Centre the frame a little above mid-chest: shoulders at the top, a strip of abdomen below.
    shift_x, shift_y = rng.uniform(-0.05, 0.05), rng.uniform(0.04, 0.14)
    units_per_px = 2.0 / (min(height, width) * zoom)
    return _Pose(height, width, units_per_px, math.cos(angle), math.sin(angle), shift_x, shift_y)


@dataclass(frozen=True)
class _Grid:
    """Body coordinates of the (half-resolution) work raster, plus its normalised radius."""

    x: np.ndarray
    y: np.ndarray
    radius2: np.ndarray  # squared distance from the frame centre, 1 at the mid-edges
    units_per_px: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.radius2.shape

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Rows and columns covering a body-coordinate box: costly fields are computed only there."""
        inside = (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if rows.size == 0:
            return slice(0, 0), slice(0, 0)
        return slice(max(0, rows[0] - 2), rows[-1] + 3), slice(max(0, cols[0] - 2), cols[-1] + 3)

    def crop(self, window: tuple[slice, slice]) -> _Grid:
        return _Grid(self.x[window], self.y[window], self.radius2[window], self.units_per_px)


def _work_grid(pose: _Pose, long_side: int) -> _Grid:
    # Anatomy is smooth, so half resolution loses nothing visible and quarters the cost.
    factor = 2 if long_side >= 128 else 1
    h, w = max(8, round(pose.height / factor)), max(8, round(pose.width / factor))
    rows = ((np.arange(h, dtype=np.float32) + 0.5) * (pose.height / h)).astype(np.float32)
    cols = ((np.arange(w, dtype=np.float32) + 0.5) * (pose.width / w)).astype(np.float32)
    x, y = pose.body_coords(rows, cols)
    ru = ((cols - pose.width / 2) / (pose.width / 2))[None, :]
    rv = ((rows - pose.height / 2) / (pose.height / 2))[:, None]
    return _Grid(x, y, ru * ru + rv * rv, pose.units_per_px * pose.width / w)


def _full_resolution(work: np.ndarray, height: int, width: int) -> np.ndarray:
    if work.shape == (height, width):
        return work.copy()
    resized = Image.fromarray(work).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32).copy()


# ---------------------------------------------------------------------------------------------
# Anatomy parameters (and the findings that change the geometry)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lung:
    side: int  # +1 image right (patient's left); -1 image left. LATERAL: one lung, +1 = posterior
    cx: float
    cy: float
    rx: float
    ry: float
    dome_top: float  # highest point of the hemidiaphragm under this lung
    dome_cx: float
    dome_curve: float
    hilum_x: float
    hilum_y: float


@dataclass(frozen=True)
class _Fracture:
    side: int
    rib: int
    position: float  # distance from the spine (|x|) where the rib breaks
    offset: float  # displacement of the outer fragment, in rib spacings
    gap: float  # width of the fracture line, body units


@dataclass(frozen=True)
class _Anatomy:
    view: str
    lungs: tuple[_Lung, ...]
    ctr: float  # cardiothoracic ratio
    thorax_width: float
    heart_anchor: float
    heart_y: float
    heart_ry: float
    heart_shear: float
    trachea_top_x: float
    carina_x: float
    carina_y: float
    rib_top: float
    rib_spacing: float
    clavicle_y: float
    body_half_width: float
    gain: float
    brightness: float
    gamma: float
    vignette: float
    work_noise: float
    fine_noise: float
    collapsed_lung: int = 0  # lung index with atelectatic volume loss
    fractures: tuple[_Fracture, ...] = field(default_factory=tuple)

    @property
    def heart_rx(self) -> float:
        return self.ctr * self.thorax_width / 2

    @property
    def heart_x(self) -> float:
        # Frontal: the heart lies mostly to the patient's left (image right) of the midline.
        # Lateral: it sits behind the sternum and grows backwards.
        shift = 0.5 if self.view == "LATERAL" else 0.12
        return self.heart_anchor + shift * 2 * self.heart_rx


def _draw_anatomy(rng: np.random.Generator, view: str) -> _Anatomy:
    # Always the same number of draws, so everything drawn afterwards is view-independent.
    # Python floats, not numpy scalars: a float64 scalar would promote every float32 raster.
    u = [float(value) for value in rng.uniform(size=16)]
    spread, width, height = 0.40 + 0.05 * u[0], 0.32 + 0.04 * u[1], 0.95 + 0.1 * u[2]
    dome_right, dome_left = 0.40 + 0.06 * u[3], 0.46 + 0.06 * u[4]
    exposure = {
        "gain": 1.45 + 0.45 * u[5],
        "brightness": -0.04 + 0.08 * u[6],
        "gamma": 0.85 + 0.3 * u[7],
        "vignette": 0.12 + 0.15 * u[8],
        "work_noise": 0.012 + 0.02 * u[9],
        "fine_noise": 0.004 + 0.008 * u[10],
    }
    base_ctr = 0.42 + 0.06 * u[11]
    if view == "LATERAL":
        return _lateral_anatomy(u, base_ctr, height, exposure)
    pa = view == "PA"
    lungs = tuple(
        _Lung(
            side=side,
            cx=side * spread,
            cy=0.22 + (0.03 if pa else 0.0),
            rx=width * (0.95 if side > 0 else 1.0),
            ry=height * (1.05 if pa else 1.0),
            dome_top=dome + (0.05 if pa else 0.0),
            dome_cx=side * (spread + 0.03),
            dome_curve=0.2 + 0.06 * u[12],
            hilum_x=side * (0.17 + 0.03 * u[13]),
            hilum_y=-0.06 + 0.04 * u[14],
        )
        for side, dome in ((-1, dome_right), (1, dome_left))
    )
    return _Anatomy(
        view=view,
        lungs=lungs,
        # A PA film magnifies the heart less than an AP one.
        ctr=base_ctr * (0.9 if pa else 1.0),
        thorax_width=2 * (spread + width),
        heart_anchor=0.0,
        heart_y=0.42 + 0.04 * u[15],
        heart_ry=0.42,
        heart_shear=0.3,
        trachea_top_x=0.0,
        carina_x=0.0,
        carina_y=-0.30 + 0.04 * u[14],
        rib_top=-0.93 + 0.05 * u[15] + (0.03 if pa else 0.0),
        rib_spacing=0.118 + 0.012 * u[2],
        clavicle_y=-0.7 + 0.04 * u[13] + (0.06 if pa else 0.0),
        body_half_width=0.91 + 0.06 * u[1],
        **exposure,
    )


def _lateral_anatomy(u: list[float], base_ctr: float, height: float, exposure: dict[str, float]) -> _Anatomy:
    lung = _Lung(
        side=1,
        cx=0.08,
        cy=0.2,
        rx=0.58 + 0.05 * u[1],
        ry=height,
        dome_top=0.42 + 0.06 * u[3],
        dome_cx=0.05,
        dome_curve=0.16,
        hilum_x=0.12,
        hilum_y=-0.02 + 0.04 * u[14],
    )
    return _Anatomy(
        view="LATERAL",
        lungs=(lung,),
        ctr=base_ctr,
        thorax_width=1.3,
        heart_anchor=-0.6,
        heart_y=0.45,
        heart_ry=0.4,
        heart_shear=-0.25,
        trachea_top_x=-0.02,
        carina_x=0.12,
        carina_y=-0.28,
        rib_top=-0.8,
        rib_spacing=0.125,
        clavicle_y=-0.82,
        body_half_width=0.88,
        **exposure,
    )


def _with_structural_findings(
    anatomy: _Anatomy, severities: Mapping[str, float], rngs: Mapping[str, np.random.Generator]
) -> _Anatomy:
    """Findings that move anatomy: heart size, an elevated hemidiaphragm, broken ribs."""
    ctr = anatomy.ctr + 0.25 * severities["cardiomegaly"]
    heart_ry = anatomy.heart_ry * (1 + 0.15 * severities["cardiomegaly"])
    collapsed = int(rngs["atelectasis"].integers(len(anatomy.lungs)))
    lungs = list(anatomy.lungs)
    # Atelectasis: volume loss pulls the hemidiaphragm up on the collapsed side.
    lungs[collapsed] = replace(
        lungs[collapsed], dome_top=lungs[collapsed].dome_top - 0.1 * severities["atelectasis"]
    )
    fractures = _drawn_fractures(rngs["fracture"], severities["fracture"])
    return replace(
        anatomy, ctr=ctr, heart_ry=heart_ry, lungs=tuple(lungs), collapsed_lung=collapsed, fractures=fractures
    )


def _drawn_fractures(rng: np.random.Generator, severity: float) -> tuple[_Fracture, ...]:
    side = 1 if rng.random() < 0.5 else -1
    rib = int(rng.integers(3, 8))
    position = rng.uniform(0.35, 0.55)
    if severity <= 0:
        return ()
    first = _Fracture(side, rib, position, 0.2 + 0.35 * severity, 0.006 + 0.014 * severity)
    if severity < 0.5:
        return (first,)
    # Severe trauma: the next rib down is broken at about the same place.
    return (first, replace(first, rib=rib + 1, position=position + 0.03, offset=first.offset * 0.8))


# ---------------------------------------------------------------------------------------------
# Density layers of the normal anatomy
# ---------------------------------------------------------------------------------------------


@dataclass
class _LungField:
    lung: _Lung
    window: tuple[slice, slice]  # the rows and columns the lung can occupy
    radius: np.ndarray  # elliptic radius, 1 on the lung outline
    cavity: np.ndarray  # inside the hemithorax outline (ignoring the diaphragm), 0..1
    inside: np.ndarray  # aerated lung above the diaphragm, 0..1


@dataclass
class _Layers:
    tissue: np.ndarray  # soft tissue and bone density
    air: np.ndarray  # lung air: subtracted; fluid or collapse removes it
    markings: np.ndarray  # vessel markings, absent where a pneumothorax is
    occupied: np.ndarray  # heart and mediastinum (0..1), which hide the lung behind them
    lungs: list[_LungField]


def _ramp(t: np.ndarray) -> np.ndarray:
    return np.clip(t, 0.0, 1.0)


def _gauss(d: np.ndarray, width: float) -> np.ndarray:
    t = d * _F32(1.0 / width)
    return np.exp(-t * t)


def _elliptic_radius(grid: _Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Radius of a lung-like ellipse: narrow apex, broad base."""
    ty = (grid.y - cy) * _F32(1 / ry)
    widen = 1 + 0.14 * ty
    tx = (grid.x - cx) / (_F32(rx) * widen)
    return np.sqrt(tx * tx + ty * ty)


def _lung_field(grid: _Grid, lung: _Lung) -> _LungField:
    window = grid.window(
        lung.cx - 1.2 * lung.rx, lung.cx + 1.2 * lung.rx, lung.cy - lung.ry, lung.cy + lung.ry
    )
    near = grid.crop(window)
    radius = np.full(grid.shape, 2.0, np.float32)  # 2: far outside the lung
    cavity, inside = np.zeros(grid.shape, np.float32), np.zeros(grid.shape, np.float32)
    radius[window] = _elliptic_radius(near, lung.cx, lung.cy, lung.rx, lung.ry)
    cavity[window] = _ramp((1 - radius[window]) * _F32(lung.rx / 0.02))
    dx = (near.x - lung.dome_cx) * _F32(1 / lung.rx)
    dome_y = lung.dome_top + lung.dome_curve * dx * dx
    inside[window] = cavity[window] * _ramp((dome_y - near.y) * _F32(1 / 0.02))
    return _LungField(lung, window, radius, cavity, inside)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    h, w = shape
    coarse_shape = (max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w))))
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _anatomy_layers(grid: _Grid, anatomy: _Anatomy, rng: np.random.Generator) -> _Layers:
    lungs = [_lung_field(grid, lung) for lung in anatomy.lungs]
    occupied = _mediastinum(grid, anatomy)
    air = sum(f.inside * (0.75 + 0.25 * np.sqrt(_ramp(1 - f.radius * f.radius))) for f in lungs)
    air = air * (1 - 0.92 * occupied)
    # Bone contrast is highest over aerated lung; over thick soft tissue it is washed out.
    body = _body(grid, anatomy)
    bones = _bones(grid, anatomy) * (0.3 + 0.7 * air) * _ramp(body * 4)
    # The heart and great vessels are a little denser than chest wall; below the domes they merge
    # with the liver and stomach.
    diaphragm = sum(lung.dome_top for lung in anatomy.lungs) / len(anatomy.lungs)
    mediastinum = 0.06 * occupied * _ramp((diaphragm - grid.y) * 8)
    tissue = 0.5 * body + mediastinum + bones - _airways(grid, anatomy)
    markings = _vessel_markings(grid, lungs, rng) * (1 - occupied)
    return _Layers(tissue.astype(np.float32), air.astype(np.float32), markings, occupied, lungs)


def _body(grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    """Soft-tissue thickness: a cylinder of chest, the neck and shoulders above it."""
    t = grid.x * _F32(1 / anatomy.body_half_width)
    thickness = np.sqrt(_ramp(1 - t * t))
    if anatomy.view == "LATERAL":
        # Seen from the side the shoulders overlap the upper chest and thicken it.
        shoulders = 0.35 * _ramp((-0.5 - grid.y) * 2.5)
        return thickness * (1 + shoulders)
    ax = np.abs(grid.x)
    shoulder_top = -1.12 + 0.35 * _ramp((ax - 0.22) * 1.3) ** 1.3
    neck = _ramp((0.3 - ax) * 8)
    return thickness * np.maximum(_ramp((grid.y - shoulder_top) * 6), neck)


def _mediastinum(grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    """Occupancy (0..1) of heart, great vessels and (lateral) spine: where there is no lung air."""
    dx = grid.x - _F32(anatomy.heart_x) - _F32(anatomy.heart_shear) * (grid.y - _F32(anatomy.heart_y))
    ex, ey = dx * _F32(1 / anatomy.heart_rx), (grid.y - anatomy.heart_y) * _F32(1 / anatomy.heart_ry)
    heart = _ramp((1 - np.sqrt(ex * ex + ey * ey)) * _F32(anatomy.heart_rx / 0.015))
    if anatomy.view == "LATERAL":
        spine = _ramp((grid.x - 0.62) * 30)
        return np.maximum(heart, spine)
    vessels = _ramp((0.11 - np.abs(grid.x - 0.015)) * 40) * _ramp((anatomy.heart_y - grid.y) * 10)
    kx, ky = grid.x - 0.11, grid.y + 0.36
    knob = _ramp((0.068 - np.sqrt(kx * kx + ky * ky)) * 40)  # aortic knob
    return np.maximum(np.maximum(heart, vessels), knob)


def _airways(grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    """Trachea and main bronchi: air columns that darken the mediastinum."""
    top = (anatomy.trachea_top_x, -1.4)
    carina = (anatomy.carina_x, anatomy.carina_y)
    trachea = _ramp((0.045 - _segment_distance(grid, top, carina)) * 50)
    if anatomy.view == "LATERAL":
        return 0.12 * trachea
    bronchi = [
        _ramp((0.03 - _segment_distance(grid, carina, (lung.hilum_x * 0.95, lung.hilum_y))) * 50)
        for lung in anatomy.lungs
    ]
    return 0.12 * np.maximum(trachea, np.maximum(*bronchi))


def _segment_distance(grid: _Grid, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    dx, dy = b[0] - a[0], b[1] - a[1]
    px, py = grid.x - _F32(a[0]), grid.y - _F32(a[1])
    t = _ramp((px * _F32(dx) + py * _F32(dy)) * _F32(1 / (dx * dx + dy * dy)))
    ox, oy = px - t * _F32(dx), py - t * _F32(dy)
    return np.sqrt(ox * ox + oy * oy)


def _bones(grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    if anatomy.view == "LATERAL":
        return _lateral_bones(grid, anatomy)
    ax = np.abs(grid.x)
    return 0.1 * _ribs(grid, anatomy, ax) + _clavicles(grid, anatomy, ax) + _spine(grid)


def _rib_band(q: np.ndarray, width: float) -> np.ndarray:
    """Periodic bone band: rib k covers q in [k, k + width); flat-topped with soft edges."""
    phase = (q - np.floor(q)) * _F32(1 / width)
    return np.sqrt(_ramp(phase * (1 - phase) * 4))


def _rib_phase(grid: _Grid, anatomy: _Anatomy, ax: np.ndarray) -> np.ndarray:
    # Posterior ribs leave the spine nearly flat and curve down towards the lateral chest wall.
    drop = grid.y - (anatomy.rib_top - 0.16 * ax + 0.75 * ax * ax)
    steps = drop * _F32(1 / anatomy.rib_spacing)
    return steps - 0.012 * steps * steps  # spacing widens a little down the chest


def _ribs(grid: _Grid, anatomy: _Anatomy, ax: np.ndarray) -> np.ndarray:
    q = _rib_phase(grid, anatomy, ax)
    extent = _ramp((ax - 0.05) * 20) * _ramp((anatomy.body_half_width - 0.04 - ax) * 20)
    count = _ramp((q + 0.2) * 5) * _ramp((_RIB_COUNT - q) * 5)
    posterior = _rib_band(q, 0.38)
    for fracture in anatomy.fractures:
        posterior = _fractured(posterior, q, ax, (grid.x * fracture.side) > 0, fracture, 0.38)
    # Anterior ribs run down and inwards from the lateral wall; fainter, not seen medially.
    qa = (grid.y - anatomy.rib_top - 0.28 - 0.5 * (1 - ax) ** 2) * _F32(1 / (1.2 * anatomy.rib_spacing))
    anterior = 0.35 * _rib_band(qa, 0.3) * _ramp((ax - 0.3) * 8) * _ramp((8 - qa) * 5)
    return extent * (posterior * count + anterior)


def _fractured(
    ribs: np.ndarray,
    q: np.ndarray,
    from_spine: np.ndarray,
    on_side: np.ndarray,
    fracture: _Fracture,
    band_width: float,
) -> np.ndarray:
    """Rib ``fracture.rib`` broken at ``position``: the outer fragment displaced, a dark gap between.

    ``q`` is the rib phase (rib k covers [k, k + band_width)), ``from_spine`` the distance along
    the ribs from the spine, ``on_side`` where the broken side of the chest is.
    """
    outer = on_side & (from_spine > fracture.position)
    shifted_q = q + _F32(fracture.offset)
    keep = ~(outer & (np.floor(q) == fracture.rib))
    moved = outer & (np.floor(shifted_q) == fracture.rib)
    broken = np.where(keep, ribs, 0) + np.where(moved, _rib_band(shifted_q, band_width), 0)
    near_rib = on_side & (np.abs(q - fracture.rib - 0.2) < 0.6)
    gap = _gauss(from_spine - _F32(fracture.position), fracture.gap) * near_rib
    return broken * (1 - gap)


def _clavicles(grid: _Grid, anatomy: _Anatomy, ax: np.ndarray) -> np.ndarray:
    # From the sternal end the clavicle rises gently towards the shoulder, with a slight S.
    centre = anatomy.clavicle_y + 0.05 - 0.12 * ax + 0.035 * np.sin(ax * 7)
    return 0.28 * _gauss(grid.y - centre, 0.03) * _ramp((ax - 0.06) * 25) * _ramp((0.78 - ax) * 15)


def _spine(grid: _Grid) -> np.ndarray:
    body = _ramp((0.075 - np.abs(grid.x)) * 60)
    segments = 0.8 + 0.2 * np.cos(grid.y * _F32(2 * math.pi / 0.115))  # vertebrae and disc spaces
    return 0.12 * body * segments


def _lateral_bones(grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    column = _ramp((grid.x - 0.6) * 25) * _ramp((0.8 - grid.x) * 25)
    vertebrae = column * (0.6 + 0.4 * np.cos(grid.y * _F32(2 * math.pi / 0.13)))  # bodies and discs
    sternum = _gauss(grid.x + 0.72 + 0.1 * grid.y, 0.03) * _ramp((0.3 - grid.y) * 8)
    ax = np.abs(grid.x - 0.65)  # ribs curve forwards from the spine
    q = _rib_phase(grid, anatomy, 0.6 * ax)
    ribs = _rib_band(q, 0.35)
    for fracture in anatomy.fractures:  # seen from the side, both hemithoraces overlap
        ribs = _fractured(ribs, q, ax, np.ones(q.shape, bool), fracture, 0.35)
    in_front_of_spine = _ramp((0.7 - grid.x) * 10) * _ramp((1.3 - ax) * 5)
    return 0.6 * vertebrae + 0.18 * sternum + 0.1 * ribs * in_front_of_spine


def _vessel_markings(grid: _Grid, lungs: list[_LungField], rng: np.random.Generator) -> np.ndarray:
    """Vessel shadows: a tree of wiggly rays from each hilum, branching as it goes out."""
    wiggle = _smooth_noise(rng, grid.shape, 12)
    breaks = _smooth_noise(rng, grid.shape, 30)
    # A small phase wiggle bends the rays; a large one would curl them into whorls.
    bend = np.cos(_F32(0.9) * wiggle) + 1j * np.sin(_F32(0.9) * wiggle)
    total = 0.12 * (breaks + 1) * sum(f.inside for f in lungs)  # parenchymal mottle
    for lung_field in lungs:
        window, near = lung_field.window, grid.crop(lung_field.window)
        lung = lung_field.lung
        dx, dy = (near.x - lung.hilum_x) * lung.side, near.y - _F32(lung.hilum_y)
        distance = np.sqrt(dx * dx + dy * dy)
        # Powers of the unit direction give cos(k * angle) without arctan2 and cos: much cheaper.
        direction = (dx + 1j * dy) / (distance + _F32(1e-6))
        squared = direction * direction
        powers = (squared * squared * squared * direction,)  # k = 7, then 14, 28
        powers += (powers[0] * powers[0],)
        powers += (powers[1] * powers[1],)
        vessels = np.zeros(distance.shape, np.float32)
        # Each generation has twice the branches, starts further out and is thinner and fainter.
        for power, start, weight in zip(powers, (0.0, 0.18, 0.38), (1.0, 0.8, 0.6)):
            rays = (power * bend[window]).real
            visible = _ramp((distance - start) * 12) * _F32(weight)
            vessels = np.maximum(vessels, _ramp((rays - 0.74) * 5) * visible)
        hilum = np.exp(-(dx * dx * _F32(1 / 0.07**2) + dy * dy * _F32(1 / 0.13**2)))
        # Multiplicative breaks: subtracting them from the threshold would punch rings into rays.
        vessels *= _ramp(0.8 + 0.5 * breaks[window]) * np.exp(-distance * _F32(1.2))
        total[window] += (vessels + 1.5 * hilum) * lung_field.inside[window]
    return total


# ---------------------------------------------------------------------------------------------
# Findings drawn as density
# ---------------------------------------------------------------------------------------------


def _lung_at(layers: _Layers, rng: np.random.Generator) -> _LungField:
    return layers.lungs[int(rng.integers(len(layers.lungs)))]


def _point_in_lung(rng: np.random.Generator, lung: _Lung) -> tuple[float, float]:
    """A random point well inside the aerated part of a lung."""
    x = lung.cx + lung.side * rng.uniform(-0.55, 0.6) * lung.rx
    y = rng.uniform(lung.cy - 0.7 * lung.ry, lung.dome_top - 0.15)
    return x, y


def _effusion(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Fluid at the base: a meniscus rising laterally, hiding the dome and costophrenic angle."""
    bilateral = rng.random() < 0.35
    primary = int(rng.integers(len(layers.lungs)))
    other_share = rng.uniform(0.4, 0.8)
    for index, lung_field in enumerate(layers.lungs):
        amount = severity if index == primary else severity * other_share * bilateral
        if amount <= 0:
            continue
        lung = lung_field.lung
        level = lung.dome_top + 0.12 - (0.08 + 0.5 * amount)
        lateral = _ramp((lung.side * (grid.x - lung.cx) * _F32(1 / lung.rx) + 0.6) * _F32(1 / 1.6))
        meniscus = level - (0.08 + 0.2 * amount) * lateral * lateral
        fluid = _ramp((grid.y - meniscus) * _F32(1 / 0.1)) * lung_field.cavity
        layers.air *= 1 - fluid
        layers.tissue += 0.06 * fluid * _ramp((grid.y - meniscus) * 4)


def _consolidation(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Patchy airspace opacity: a blob broken up by noise, with lucent air bronchograms."""
    patchiness = _smooth_noise(rng, grid.shape, 24)
    for _ in range(1 + int(rng.random() < 0.5 * severity)):
        lung_field = _lung_at(layers, rng)
        px, py = _point_in_lung(rng, lung_field.lung)
        size = (0.1 + 0.12 * severity) * rng.uniform(0.85, 1.2)
        dx, dy = grid.x - _F32(px), (grid.y - _F32(py)) * _F32(0.8)
        blob = np.exp(-(dx * dx + dy * dy) * _F32(1 / size**2))
        patch = _ramp((blob * (1 + 0.5 * patchiness) - 0.3) * 2.5) * lung_field.inside
        opacity = (0.45 + 0.5 * severity) * patch * (1 - 0.5 * layers.markings)
        layers.air *= 1 - opacity


def _edema(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Bilateral perihilar (bat-wing) haze fading outwards, Kerley B lines at the bases."""
    spread = rng.uniform(0.9, 1.1)
    for lung_field in layers.lungs:
        lung, window = lung_field.lung, lung_field.window
        near, inside = grid.crop(window), lung_field.inside[window]
        hx = (near.x - lung.hilum_x) * _F32(1 / ((0.3 + 0.2 * severity) * spread))
        hy = (near.y - lung.hilum_y - 0.08) * _F32(1 / (0.38 + 0.15 * severity))
        layers.air[window] *= 1 - 0.8 * severity * np.exp(-(hx * hx + hy * hy)) * inside
        periphery = _ramp((lung_field.radius[window] - 0.78) * 8) * _ramp((near.y - lung.cy + 0.05) * 5)
        kerley = _ramp(np.cos(near.y * _F32(2 * math.pi / 0.04)) * 4 - 3)
        layers.tissue[window] += 0.12 * severity * kerley * periphery * inside
    layers.markings *= 1 + 0.5 * severity  # engorged vessels


def _pneumothorax(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Lung edge pulled away from the apex and lateral wall: black, marking-free rim, pleural line."""
    lung_field = _lung_at(layers, rng)
    lung = lung_field.lung
    # The lung shrinks towards its medial base (the hilum and ligament hold it there).
    anchor_x, anchor_y = lung.cx - lung.side * 0.5 * lung.rx, lung.cy + 0.3 * lung.ry
    scale = 1 - (0.08 + 0.3 * severity) * rng.uniform(0.85, 1.1)
    cx, cy = anchor_x + scale * (lung.cx - anchor_x), anchor_y + scale * (lung.cy - anchor_y)
    window = lung_field.window  # the collapsed lung lies inside the original one
    radius = _elliptic_radius(grid.crop(window), cx, cy, scale * lung.rx, scale * lung.ry)
    collapsed = _ramp((1 - radius) * _F32(scale * lung.rx / 0.012))
    # Behind the heart there is nothing to see.
    visible = lung_field.inside[window] * (1 - layers.occupied[window])
    space = visible * (1 - collapsed)
    layers.markings[window] *= 1 - space
    layers.air[window] += (0.25 + 0.1 * severity) * space
    pleural_line = _gauss((radius - 1) * _F32(scale * lung.rx), 0.006)
    layers.tissue[window] += 0.2 * pleural_line * visible


def _atelectasis(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Plate-like (discoid) bands above the elevated hemidiaphragm of the collapsed side."""
    lung_field = layers.lungs[anatomy.collapsed_lung]
    lung = lung_field.lung
    for band_index in range(1 + int(severity >= 0.6)):
        y0 = lung.dome_top - rng.uniform(0.08, 0.2) - 0.12 * band_index
        x0 = lung.cx + lung.side * rng.uniform(-0.05, 0.15) * lung.rx
        angle = rng.uniform(-0.3, 0.3)
        along = (grid.x - x0) * _F32(math.cos(angle)) + (grid.y - y0) * _F32(math.sin(angle))
        across = (grid.y - y0) * _F32(math.cos(angle)) - (grid.x - x0) * _F32(math.sin(angle))
        half_length = rng.uniform(0.55, 0.8) * lung.rx
        band = _gauss(across, 0.012 + 0.025 * severity) * _ramp((half_length - np.abs(along)) * 15)
        layers.air *= 1 - (0.4 + 0.55 * severity) * band * lung_field.inside


def _lung_lesion(
    layers: _Layers, grid: _Grid, anatomy: _Anatomy, severity: float, rng: np.random.Generator
) -> None:
    """Round nodules or masses: spheres, so brightest in the middle."""
    count = 1 + int(rng.random() < 0.6 * severity) + int(rng.random() < 0.3 * severity)
    for _ in range(count):
        lung_field = _lung_at(layers, rng)
        px, py = _point_in_lung(rng, lung_field.lung)
        size = (0.03 + 0.06 * severity) * rng.uniform(0.8, 1.25)
        dx, dy = grid.x - _F32(px), grid.y - _F32(py)
        sphere = np.sqrt(_ramp(1 - (dx * dx + dy * dy) * _F32(1 / size**2)))
        layers.air *= 1 - 0.85 * _ramp(sphere * 2) * lung_field.inside
        layers.tissue += (0.05 + 0.08 * severity) * sphere


_DensityFinding = Callable[[_Layers, _Grid, _Anatomy, float, np.random.Generator], None]
_DENSITY_FINDINGS: dict[str, _DensityFinding] = {
    "effusion": _effusion,
    "consolidation": _consolidation,
    "edema": _edema,
    "pneumothorax": _pneumothorax,
    "atelectasis": _atelectasis,
    "lung_lesion": _lung_lesion,
}


# ---------------------------------------------------------------------------------------------
# Exposure, noise
# ---------------------------------------------------------------------------------------------


def _exposed(layers: _Layers, grid: _Grid, anatomy: _Anatomy, noise_rng: np.random.Generator) -> np.ndarray:
    """Density to brightness: exponential attenuation, exposure, vignetting and quantum noise."""
    density = layers.tissue - 0.33 * layers.air + 0.15 * layers.markings
    gain = _F32(anatomy.gain)
    brightness = (1 - np.exp(-gain * _ramp(density))) * _F32(1 / (1 - math.exp(-anatomy.gain * 1.1)))
    brightness = _ramp(brightness) ** _F32(anatomy.gamma) + _F32(anatomy.brightness)
    brightness *= 1 - _F32(anatomy.vignette) * grid.radius2
    noise = noise_rng.standard_normal(grid.shape, dtype=np.float32)
    return (brightness + _F32(anatomy.work_noise) * noise).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Support devices, drawn at full resolution so that they stay thin
# ---------------------------------------------------------------------------------------------


def _bezier(points: list[tuple[float, float]], samples: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Points along a quadratic or cubic Bezier curve in body units."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    p = np.asarray(points, dtype=np.float64)
    if len(points) == 3:
        curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    else:
        curve = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    return curve[:, 0], curve[:, 1]


def _polyline(pose: _Pose, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    px, py = pose.pixel_coords(x, y)
    return [(float(a), float(b)) for a, b in zip(px, py)]


def _devices_layer(pose: _Pose, anatomy: _Anatomy, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Opacity (0..1) of tubes, lines and ECG leads; more devices at higher severity."""
    layer = Image.new("L", (pose.width, pose.height), 0)
    draw = ImageDraw.Draw(layer)
    px_per_unit = 1 / pose.units_per_px
    line_width = max(1, round(0.011 * px_per_unit))
    # Draw every random parameter whatever the severity, so that each device stays put.
    tube_tip = anatomy.carina_y - rng.uniform(0.06, 0.18)
    ecg = [(rng.uniform(-0.75, 0.75), rng.uniform(-0.9, 0.6), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
    line_side = 1 if rng.random() < 0.3 else -1
    line_bend = rng.uniform(-0.06, 0.06)
    _draw_endotracheal_tube(draw, pose, anatomy, tube_tip, line_width)
    if severity >= 0.25:
        _draw_ecg_leads(draw, pose, ecg, px_per_unit, line_width)
    if severity >= 0.5:
        _draw_central_line(draw, pose, line_side, line_bend, line_width)
    if severity >= 0.75:
        _draw_enteric_tube(draw, pose, anatomy, line_width)
    blurred = layer.filter(ImageFilter.SMOOTH)  # soften the aliased edges of the drawn lines
    opacity = _F32((0.7 + 0.3 * severity) / 255)
    return np.asarray(blurred, dtype=np.float32) * opacity


def _draw_endotracheal_tube(
    draw: ImageDraw.ImageDraw, pose: _Pose, anatomy: _Anatomy, tip_y: float, width: int
) -> None:
    bend = anatomy.carina_x - anatomy.trachea_top_x
    x, y = _bezier(
        [
            (anatomy.trachea_top_x - 0.02, -1.6),
            (anatomy.trachea_top_x, -0.7),
            (anatomy.carina_x - 0.3 * bend, tip_y),
        ]
    )
    points = _polyline(pose, x, y)
    draw.line(points, fill=190, width=2 * width, joint="curve")
    draw.line(points, fill=255, width=max(1, width // 2), joint="curve")  # radio-opaque stripe


def _draw_ecg_leads(
    draw: ImageDraw.ImageDraw,
    pose: _Pose,
    leads: list[tuple[float, float, float]],
    px_per_unit: float,
    width: int,
) -> None:
    radius = 0.035 * px_per_unit
    for x, y, direction in leads:
        cx, cy = pose.pixel_coords(np.array([x]), np.array([y]))
        box = (float(cx[0]) - radius, float(cy[0]) - radius, float(cx[0]) + radius, float(cy[0]) + radius)
        draw.ellipse(box, outline=235, width=width)
        wire = [(x, y), (x + 0.4 * math.cos(direction), y + 0.4 * math.sin(direction)), (x * 3, -2.0)]
        draw.line(_polyline(pose, *_bezier(wire)), fill=170, width=max(1, width // 2), joint="curve")


def _draw_central_line(draw: ImageDraw.ImageDraw, pose: _Pose, side: int, bend: float, width: int) -> None:
    # Subclavian entry, along the vein under the clavicle, down the SVC on the patient's right.
    control = [(side * 0.8, -0.95), (side * 0.35, -0.7 + bend), (-0.25, -0.62), (-0.06, -0.15)]
    draw.line(_polyline(pose, *_bezier(control)), fill=230, width=width, joint="curve")


def _draw_enteric_tube(draw: ImageDraw.ImageDraw, pose: _Pose, anatomy: _Anatomy, width: int) -> None:
    stomach_y = max(lung.dome_top for lung in anatomy.lungs) + 0.3
    control = [(-0.03, -1.6), (-0.04, 0.1), (0.05, stomach_y + 0.2), (0.35, stomach_y)]
    draw.line(_polyline(pose, *_bezier(control)), fill=210, width=width, joint="curve")
