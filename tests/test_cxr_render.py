"""The synthetic chest X-ray renderer: deterministic, well-formed, and every finding visible where it should be.

Finding checks compare a render with the finding against the same seed without it: the anatomy and
the noise of a seed do not depend on the findings, so the difference is the finding alone. Regions
are fractions of the frame (anatomy moves a little per seed), and checks average over a few seeds.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
from PIL import Image

from spark_jobs.synth.cxr_render import FINDINGS, encode_jpeg, render_cxr

SIZE = 256  # small renders keep the suite fast; the geometry is resolution-independent
SEEDS = range(6)


@cache
def _render(seed: int, view: str = "AP", **severities: float) -> np.ndarray:
    image = render_cxr(severities, seed, SIZE, view)
    image.setflags(write=False)
    return image


def _change(finding: str, severity: float, seed: int, view: str = "AP") -> np.ndarray:
    """Brightness added by one finding, in grey levels (negative where it darkens)."""
    with_finding = _render(seed, view, **{finding: severity}).astype(np.float64)
    return with_finding - _render(seed, view).astype(np.float64)


def _region(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    h, w = image.shape
    return image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)]


def _block_means(image: np.ndarray, blocks: int = 8) -> np.ndarray:
    h, w = image.shape
    return np.array(
        [
            [
                image[i * h // blocks : (i + 1) * h // blocks, j * w // blocks : (j + 1) * w // blocks].mean()
                for j in range(blocks)
            ]
            for i in range(blocks)
        ]
    )


def _silhouette_width(image: np.ndarray) -> float:
    """Width (fraction of the frame) of the bright mediastinal band at heart height.

    Walks out from the centre column of the row-averaged profile until it falls below halfway
    between the lung fields and the mediastinum.
    """
    h, w = image.shape
    profile = image[int(0.48 * h) : int(0.62 * h)].astype(np.float64).mean(axis=0)
    centre = w // 2
    lungs = np.percentile(profile[int(0.1 * w) : int(0.9 * w)], 5)
    threshold = (lungs + profile[centre - 3 : centre + 4].mean()) / 2
    left = right = centre
    while left > 0 and profile[left - 1] > threshold:
        left -= 1
    while right < w - 1 and profile[right + 1] > threshold:
        right += 1
    return (right - left + 1) / w


# ----------------------------------------------------------------------------------------------
# Determinism and format
# ----------------------------------------------------------------------------------------------


def test_same_inputs_give_identical_jpeg_bytes() -> None:
    findings = {"cardiomegaly": 0.6, "effusion": 0.4, "support_devices": 1.0, "fracture": 0.7}
    first = encode_jpeg(render_cxr(findings, 17, 320, "AP"))
    second = encode_jpeg(render_cxr(dict(reversed(findings.items())), 17, 320, "AP"))
    assert first == second


@pytest.mark.parametrize("view", ["AP", "PA", "LATERAL"])
def test_different_seeds_give_different_images(view: str) -> None:
    images = [_render(seed, view) for seed in SEEDS]
    assert len({image.shape for image in images}) > 1  # the aspect ratio varies per seed
    for i, first in enumerate(images):
        for second in images[i + 1 :]:
            h, w = min(first.shape[0], second.shape[0]), min(first.shape[1], second.shape[1])
            assert np.abs(first[:h, :w].astype(float) - second[:h, :w]).mean() > 2


def test_views_differ_for_the_same_seed() -> None:
    ap, pa, lateral = (_render(3, view) for view in ("AP", "PA", "LATERAL"))
    assert not np.array_equal(ap, pa)
    assert np.abs(ap.astype(float) - lateral.astype(float)).mean() > 10


@pytest.mark.parametrize("long_side", [32, 100, 256, 512, 777])
def test_size_and_dtype(long_side: int) -> None:
    for seed in (0, 1):
        image = render_cxr({"effusion": 0.5}, seed, long_side)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert max(image.shape) == long_side


def test_aspect_ratio_varies_within_bounds() -> None:
    ratios = []
    for seed in range(20):
        image = render_cxr({}, seed, 100)
        ratios.append(image.shape[0] / image.shape[1])
    assert all(0.8 - 0.015 <= ratio <= 1.25 + 0.015 for ratio in ratios)  # short side is rounded
    assert min(ratios) < 0.92 and max(ratios) > 1.08  # both landscape and portrait frames occur


def test_images_use_the_grey_range_like_a_radiograph() -> None:
    for seed in SEEDS:
        image = _render(seed)
        low, high = np.percentile(image, [2, 98])
        assert low < 40 and high > 170, (seed, low, high)


@pytest.mark.parametrize("view", ["AP", "PA", "LATERAL", "ll"])
@pytest.mark.parametrize("long_side", [32, 97, 512])
def test_no_invalid_arithmetic_with_every_finding_at_full_severity(view: str, long_side: int) -> None:
    # An uint8 result cannot hold a NaN, so catch one where it would arise: in the float pipeline.
    with np.errstate(invalid="raise", divide="raise", over="raise"):
        image = render_cxr(dict.fromkeys(FINDINGS, 1.0), 5, long_side, view)
    assert image.dtype == np.uint8 and max(image.shape) == long_side
    assert 0 < image.mean() < 255


def test_jpeg_decodes_to_the_same_image_shape() -> None:
    image = _render(2, "AP", support_devices=1.0, edema=0.5)
    data = encode_jpeg(image, quality=90)
    assert data[:2] == b"\xff\xd8" and b"Exif" not in data
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "L" and decoded.size == (image.shape[1], image.shape[0])
    assert np.abs(np.asarray(decoded, dtype=float) - image).mean() < 3


def test_jpeg_quality_changes_the_bytes() -> None:
    image = _render(2)
    assert len(encode_jpeg(image, quality=50)) < len(encode_jpeg(image, quality=95))


def test_encode_jpeg_rejects_non_grayscale_uint8() -> None:
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize(
    ("findings", "seed", "long_side", "view"),
    [
        ({"tumour": 0.5}, 0, 256, "AP"),
        ({"effusion": 1.5}, 0, 256, "AP"),
        ({"effusion": -0.1}, 0, 256, "AP"),
        ({"effusion": float("nan")}, 0, 256, "AP"),
        ({}, -1, 256, "AP"),
        ({}, 0, 8, "AP"),
        ({}, 0, 256, "OBLIQUE"),
    ],
)
def test_invalid_arguments_are_rejected(
    findings: dict[str, float], seed: int, long_side: int, view: str
) -> None:
    with pytest.raises(ValueError):
        render_cxr(findings, seed, long_side, view)


def test_zero_severity_is_the_same_as_absent() -> None:
    assert np.array_equal(render_cxr(dict.fromkeys(FINDINGS, 0.0), 4, SIZE), _render(4))


# ----------------------------------------------------------------------------------------------
# Findings: visible, where they belong, stronger with severity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("finding", FINDINGS)
def test_every_finding_changes_the_image_more_as_severity_grows(finding: str) -> None:
    changes = {
        severity: np.mean([np.abs(_change(finding, severity, seed)).mean() for seed in SEEDS])
        for severity in (0.2, 0.5, 1.0)
    }
    assert 0 < changes[0.2] < changes[0.5] < changes[1.0], changes


@pytest.mark.parametrize("view", ["PA", "LATERAL"])
@pytest.mark.parametrize("finding", FINDINGS)
def test_every_finding_shows_in_the_other_views(finding: str, view: str) -> None:
    for seed in SEEDS[:3]:
        assert np.abs(_change(finding, 1.0, seed, view)).max() > 15, (finding, view, seed)


@pytest.mark.parametrize("finding", FINDINGS)
def test_a_finding_does_not_move_the_anatomy(finding: str) -> None:
    # Most of the frame (chest wall, abdomen, the far corners) stays bit-identical.
    for seed in SEEDS:
        unchanged = np.mean(_change(finding, 0.5, seed) == 0)
        assert unchanged > 0.5, (finding, seed, unchanged)


def test_cardiomegaly_widens_the_heart_silhouette() -> None:
    widths = {
        s: np.mean([_silhouette_width(_render(seed, cardiomegaly=s)) for seed in SEEDS]) for s in (0, 0.5, 1)
    }
    assert widths[0] < widths[0.5] < widths[1], widths
    assert widths[1] / widths[0] > 1.15, widths
    for seed in SEEDS:
        band = _change("cardiomegaly", 1.0, seed)
        assert _region(band, (0.45, 0.65), (0.3, 0.7)).mean() > 5, seed


def test_a_pa_film_shows_a_smaller_heart_than_an_ap_film() -> None:
    ap = np.mean([_silhouette_width(_render(seed, "AP")) for seed in SEEDS])
    pa = np.mean([_silhouette_width(_render(seed, "PA")) for seed in SEEDS])
    assert pa < ap


def test_effusion_brightens_the_lung_bases() -> None:
    for seed in SEEDS:
        change = _change("effusion", 1.0, seed)
        bases = [_region(change, (0.55, 0.75), cols).mean() for cols in ((0.1, 0.4), (0.6, 0.9))]
        apices = [_region(change, (0.1, 0.3), cols).mean() for cols in ((0.1, 0.4), (0.6, 0.9))]
        assert max(bases) > 15, (seed, bases)
        assert max(bases) > 3 * max(apices) + 1, (seed, bases, apices)


def test_pneumothorax_darkens_an_apical_or_lateral_rim() -> None:
    for seed in SEEDS:
        change = _change("pneumothorax", 1.0, seed)
        rims = [_region(change, (0.15, 0.45), cols).mean() for cols in ((0.05, 0.3), (0.7, 0.95))]
        assert min(rims) < -8, (seed, rims)
        assert change.max() < 60  # a pleural line, nothing bright


def test_pneumothorax_grows_with_severity() -> None:
    darkening = {
        s: np.mean([(_change("pneumothorax", s, seed) < -5).mean() for seed in SEEDS]) for s in (0.2, 0.6, 1)
    }
    assert darkening[0.2] < darkening[0.6] < darkening[1], darkening


def test_consolidation_brightens_a_patch_of_lung() -> None:
    for seed in SEEDS:
        assert _block_means(_change("consolidation", 1.0, seed)).max() > 15, seed


def test_edema_brightens_both_perihilar_regions() -> None:
    for seed in SEEDS:
        change = _change("edema", 1.0, seed)
        hila = [_region(change, (0.3, 0.55), cols).mean() for cols in ((0.2, 0.42), (0.58, 0.8))]
        assert min(hila) > 10, (seed, hila)
        # Haze fades outwards: the perihilar region gains more than the lateral lung edge.
        edges = [_region(change, (0.3, 0.55), cols).mean() for cols in ((0.02, 0.12), (0.88, 0.98))]
        assert min(hila) > max(edges), (seed, hila, edges)


def _has_aerated_lung_below(change: np.ndarray, base: np.ndarray, row: int, col: int) -> bool:
    """Below (row, col), within a few percent of the height, is there unchanged dark lung?"""
    dark = np.percentile(base, 5) + 0.5 * (np.percentile(base, 95) - np.percentile(base, 5))
    below = slice(row + 3, row + int(0.12 * base.shape[0]))
    return bool(np.any((change[below, col] < 0.25 * change[row, col]) & (base[below, col] < dark)))


def test_atelectasis_adds_a_plate_in_a_lower_zone() -> None:
    for seed in SEEDS:
        change, base = _change("atelectasis", 1.0, seed), _render(seed).astype(np.float64)
        blocks = _block_means(change)
        assert blocks[3:7].max() > 8, seed
        assert blocks[:2].max() < 2, seed  # nothing in the upper zones
        # A plate sits in the lung with aerated lung under it, unlike the (also drawn) raised
        # hemidiaphragm, which has the abdomen under it.
        rows, cols = np.nonzero(change > 0.6 * change.max())
        assert any(_has_aerated_lung_below(change, base, r, c) for r, c in zip(rows, cols)), seed


def test_lung_lesion_adds_a_small_round_bright_spot() -> None:
    for seed in SEEDS:
        change = _change("lung_lesion", 1.0, seed)
        assert _block_means(change, blocks=16).max() > 20, seed
        assert (change > 10).mean() < 0.08, seed  # nodules, not a whole-lung change


def test_fracture_is_a_local_rib_change() -> None:
    for seed in SEEDS:
        change = np.abs(_change("fracture", 1.0, seed))
        assert change.max() > 15, seed
        assert 0 < (change > 5).mean() < 0.03, seed


def test_support_devices_put_a_thin_bright_line_down_the_upper_midline() -> None:
    for seed in SEEDS:
        change = _region(_change("support_devices", 0.1, seed), (0.02, 0.3), (0.35, 0.65))  # the tube alone
        # Every row of the upper midline crosses something bright, and only a few pixels wide.
        assert np.median(change.max(axis=1)) > 40, seed
        assert np.median((change > 15).sum(axis=1)) <= 0.05 * change.shape[1] + 2, seed


def test_support_devices_add_more_hardware_at_higher_severity() -> None:
    for seed in SEEDS:
        bright = [(_change("support_devices", s, seed) > 40).sum() for s in (0.1, 0.4, 0.7, 1.0)]
        assert bright == sorted(bright) and bright[-1] > 1.5 * bright[0], (seed, bright)
