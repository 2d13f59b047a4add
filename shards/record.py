"""One shard record: its components as bytes, and back (FORMAT.md "On disk").

Pure Python (numpy + PIL), no Spark and no torch, so that the Spark writer, the readers, the
verifier and other packages' tests (tiny hand-made shards) all share one encoding.
Every encoder is deterministic: the same record gives the same bytes, which is what makes a
re-run of the writer produce identical shards (and identical sha256 in the manifest).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_FEATURES = 76
COMPONENTS = ("ehr.npy", "cxr.jpg", "y.npy", "hours.npy", "bins.npy", "meta.json")  # order in the tar
JPEG_QUALITY = 95
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


class ImageError(ValueError):
    """An image that cannot be used (missing, not decodable or too large); ``reason`` is the counted reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Record:
    """A record before encoding. ``image`` is a JPEG already made by :func:`encode_image`.

    Stay-level tasks: ``y`` is ``[L]`` float32 (LOS: ``[1]`` int64), ``hours``/``bins`` None and
    ``meta["sample_id"]`` set. Hourly segments: ``y`` is ``[K, L]`` (LOS ``[K]``), ``hours`` and
    ``bins`` have ``K`` entries and ``meta["sample_ids"]`` lists the K sample ids.
    """

    key: str
    ehr: np.ndarray
    y: np.ndarray
    meta: dict[str, Any]
    image: bytes | None = None
    hours: np.ndarray | None = None
    bins: np.ndarray | None = None
    extra: dict[str, bytes] = field(default_factory=dict)  # for tests of foreign components

    @property
    def n_samples(self) -> int:
        return 1 if self.hours is None else int(len(self.hours))

    def sample_ids(self) -> list[str]:
        return list(self.meta["sample_ids"]) if self.hours is not None else [self.meta["sample_id"]]


def tar_key(index: int, name: str) -> str:
    """Member basename of a record: unique per shard (``index``) and readable (sanitized ``name``).

    WebDataset and DALI split a member name at the first dot, so the key must have none.
    """
    return f"{index:07d}_{_KEY_BAD.sub('_', name)}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def encode_record(rec: Record) -> list[tuple[str, bytes]]:
    """``[(extension, bytes)]`` in :data:`COMPONENTS` order; EHR as float16 (FORMAT.md)."""
    ehr = np.asarray(rec.ehr, dtype=np.float16)
    if ehr.ndim != 2 or ehr.shape[1] != N_FEATURES:
        raise ValueError(f"record {rec.key}: ehr must be T x {N_FEATURES}, got {ehr.shape}")
    parts: dict[str, bytes] = {"ehr.npy": npy_bytes(ehr)}
    if rec.image is not None:
        parts["cxr.jpg"] = rec.image
    parts["y.npy"] = npy_bytes(rec.y)
    if rec.hours is not None:
        if rec.bins is None or len(rec.bins) != len(rec.hours) or len(rec.y) != len(rec.hours):
            raise ValueError(f"record {rec.key}: hours, bins and y must have the same length K")
        parts["hours.npy"] = npy_bytes(np.asarray(rec.hours, dtype=np.float32))
        parts["bins.npy"] = npy_bytes(np.asarray(rec.bins, dtype=np.int32))
    meta = dict(rec.meta)
    meta["has_image"] = rec.image is not None
    parts["meta.json"] = json_bytes(meta)
    parts.update(rec.extra)
    order = {ext: i for i, ext in enumerate(COMPONENTS)}
    return sorted(parts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _to_gray8(img):
    """8-bit grayscale. 16/32-bit integer images are scaled by their bit depth: PIL's own
    ``convert("L")`` clips them at 255, which turns a 16-bit radiograph almost white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        top = 65535.0 if img.mode.startswith("I;16") or img.getextrema()[1] <= 65535 else 2.0**32 - 1
        return img.convert("I").point(lambda v: v * (255.0 / top)).convert("L")
    return img.convert("L")


def encode_image(data: bytes, image_size: int = 256) -> bytes:
    """Decode any image PIL reads, make it grayscale, resize the short side to ``image_size``
    (aspect kept, bicubic) and encode a baseline JPEG; raises :class:`ImageError` ("corrupt", or
    "too_large" past PIL's decompression-bomb limit, checked on the header before decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            gray = _to_gray8(img)
    except Image.DecompressionBombError as err:  # PIL's guard (MAX_IMAGE_PIXELS): not an OSError
        raise ImageError("too_large", str(err)) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError("corrupt", str(err)) from err
    w, h = gray.size
    if w < 1 or h < 1:
        raise ImageError("corrupt", f"empty image {w}x{h}")
    if min(w, h) != image_size:
        scale = image_size / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if w <= h:
            size = (image_size, size[1])
        else:
            size = (size[0], image_size)
        gray = gray.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    gray.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return out.getvalue()


def decode_record(parts: dict[str, bytes]) -> dict[str, Any]:
    """Components (extension -> bytes, as WebDataset groups them) -> numpy arrays and meta.

    The image stays as JPEG bytes (``cxr``, None when absent): decoding belongs to the reader,
    which may do it on a GPU.
    """
    meta = json.loads(parts["meta.json"])
    out: dict[str, Any] = {
        "ehr": load_npy(parts["ehr.npy"]),
        "y": load_npy(parts["y.npy"]),
        "meta": meta,
        "cxr": parts.get("cxr.jpg"),
    }
    if "hours.npy" in parts:
        out["hours"] = load_npy(parts["hours.npy"])
        out["bins"] = load_npy(parts["bins.npy"])
    return out
