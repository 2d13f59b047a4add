"""RELIABILITY.md, images and shards: a bad image is a counted status (never a crash of the
writer), a damaged shard is an error that names the shard and the record."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.reader import ReaderConfig, RecordError, shard_dataset
from shards.tiny import tiny_dataset
from spark_jobs.write_shards import _load_images

SIZE = 64


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says ``width`` x ``height``: a decompression bomb's first bytes."""
    png = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    at = png.index(b"IHDR")
    png[at + 4 : at + 12] = struct.pack(">II", width, height)
    png[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(png[at : at + 17])))
    return bytes(png)


def _jpeg_with_precision(bits: int) -> bytes:
    """A baseline JPEG whose frame header claims ``bits`` per sample (12/16-bit: not baseline)."""
    jpeg = bytearray(_encoded(Image.new("L", (80, 90), 128), "JPEG"))
    jpeg[jpeg.index(b"\xff\xc0") + 4] = bits
    return bytes(jpeg)


GRADIENT16 = (np.arange(90 * 80).reshape(90, 80) * (65535 / (90 * 80 - 1))).astype(np.uint16)
GOOD = _encoded(Image.new("L", (80, 90), 128), "JPEG")
FILES: dict[str, bytes | None] = {
    "missing": None,
    "zero_byte": b"",
    "truncated": GOOD[: len(GOOD) // 3],
    "png_named_jpg": _encoded(Image.new("L", (80, 90), 128), "PNG"),
    "bomb": _png_header_claiming(100_000, 100_000),
    "cmyk": _encoded(Image.new("CMYK", (80, 90), (0, 0, 0, 100)), "JPEG"),
    "png16_named_jpg": _encoded(Image.fromarray(GRADIENT16), "PNG"),
    "jpeg16": _jpeg_with_precision(16),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, tuple[bytes | None, str]]:
    """Every case through the writer's image loader, as files under a CXR root."""
    root = tmp_path_factory.mktemp("cxr")
    for name, data in FILES.items():
        if data is not None:
            (root / f"{name}.jpg").write_bytes(data)
    rows = [{"dicom_id": name, "path": f"{name}.jpg"} for name in FILES]
    return {dicom: (jpg, status) for dicom, jpg, status in _load_images(rows, str(root), SIZE)}


@pytest.mark.parametrize(
    "name,status",
    [
        ("missing", "missing"),
        ("zero_byte", "corrupt"),
        ("truncated", "corrupt"),
        ("bomb", "too_large"),
        ("jpeg16", "corrupt"),
    ],
)
def test_unusable_image_is_a_counted_status(loaded, name, status):
    assert loaded[name] == (None, status)


@pytest.mark.parametrize("name", ["png_named_jpg", "cmyk", "png16_named_jpg"])
def test_readable_image_of_another_kind_becomes_a_grayscale_jpeg(loaded, name):
    jpg, status = loaded[name]
    assert status == "ok"
    with Image.open(io.BytesIO(jpg)) as img:
        assert (img.format, img.mode, min(img.size)) == ("JPEG", "L", SIZE)
        pixels = np.asarray(img, dtype=np.float64)
    if name == "png16_named_jpg":  # scaled by its bit depth, not clipped to white at 255
        assert pixels.min() < 16 and pixels.max() > 239 and 100 < pixels.mean() < 155
    else:
        assert pixels.std() < 2


def _rewrite_without(shard: Path, drop_ext: str) -> str:
    """Rewrite ``shard`` with its first record missing ``drop_ext``; returns that record's key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name != f"{key}.{drop_ext}":
                tar.addfile(member, io.BytesIO(data))
    return key


def test_record_missing_a_field_names_the_shard_and_the_key(tmp_path, caplog):
    root = tmp_path / "ds"
    manifest = tiny_dataset(str(root), tasks=("ihm",), records=4, records_per_shard=2)
    name = manifest["tasks"]["ihm"]["splits"]["val"]["shards"][0]["name"]
    key = _rewrite_without(root / name, "y.npy")
    with pytest.raises(RecordError) as err:
        list(shard_dataset(str(root), ReaderConfig(task="ihm", split="val")))
    assert name in str(err.value) and key in str(err.value) and "y.npy" in str(err.value)
    got = list(shard_dataset(str(root), ReaderConfig(task="ihm", split="val", train=True, exact=True)))
    assert len(got) == 3 and "skipping a bad record" in caplog.text and key in caplog.text
