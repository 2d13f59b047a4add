"""The WebDataset loader the trainer uses: shards of a (task, split) -> decoded, normalized samples.

    ds = shard_dataset(root, ReaderConfig(task="ihm", split="train"), rank=r, world_size=w)
    loader = make_loader(root, cfg, batch_size=16, num_workers=2, rank=r, world_size=w)

Stages (each with an explicit error ``handler``): shard list (by rank, then by DataLoader worker)
-> open through fsspec (local or ``s3://``; credentials from the environment) -> tar members ->
records -> shuffle (train) -> decode + normalize + image transform -> ``expand_hourly`` (sample
mode of the hourly tasks) -> shuffle again (train). Batches are built by :func:`collate_samples`
or :func:`collate_sequences` (FORMAT.md "A collated batch").

Training splits shards round-robin over ranks (each rank its own shards, reshuffled every pass
when ``repeat``). Evaluation (``exact``) uses :func:`shards.manifest.eval_assignment`: whole shards
per rank, every sample exactly once, with per-rank counts known from the manifest
(:func:`shards.manifest.rank_counts`) so the trainer can gather uneven shares.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Literal

import fsspec
import numpy as np
import torch
import webdataset as wds

from conf.tasks import HOURLY_TASKS, task_spec
from shards.manifest import eval_assignment, read_manifest, split_info
from shards.record import N_FEATURES, decode_record
from shards.store import join
from shards.transforms import ImageTransform, ImageTransformConfig, blank_image

log = logging.getLogger("medmod.shards.reader")


@dataclass
class ReaderConfig:
    task: str = "ihm"
    split: str = "train"
    mode: Literal["sample", "sequence"] = "sample"  # sequence: hourly segments, not expanded
    train: bool | None = None  # augment + shuffle; None: split == "train"
    exact: bool | None = None  # exactly-once shard assignment; None: not train
    repeat: bool = False  # cycle the rank's shards forever (training by steps)
    shuffle_buffer: int = 256
    seed: int = 0
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options (e.g. endpoint)
    paired_only: bool = False  # only records with an image (SSL pretraining reads pairs)

    @property
    def is_train(self) -> bool:
        return self.split == "train" if self.train is None else self.train

    @property
    def is_exact(self) -> bool:
        return (not self.is_train) if self.exact is None else self.exact


class RecordError(ValueError):
    """A record that does not decode to the FORMAT.md sample (names the record)."""


# ---------------------------------------------------------------- error handlers


def log_and_continue(exn: Exception) -> bool:
    """Training: a bad record is logged (with its shard and key) and skipped, never silently."""
    log.warning("skipping a bad record: %r", exn)
    return True


def reraise(exn: Exception) -> bool:
    """Evaluation: a bad record must stop the run, since every sample has to be scored once."""
    raise exn


# ---------------------------------------------------------------- decode


def normalize_ehr(ehr: np.ndarray, normalizer: dict) -> torch.Tensor:
    """float16 ``[T, 76]`` -> float32, continuous columns standardized; ``T = 0`` -> one zero row."""
    x = np.asarray(ehr, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise RecordError(f"ehr must be T x {N_FEATURES}, got {x.shape}")
    if len(x) == 0:
        return torch.zeros(1, N_FEATURES)
    cols = np.asarray(normalizer["columns"], dtype=np.int64)
    x[:, cols] = (x[:, cols] - np.asarray(normalizer["mean"], np.float32)) / np.asarray(
        normalizer["std"], np.float32
    )
    return torch.from_numpy(x)


def decode_image(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 ``[1, H, W]`` (grayscale as stored) with torchvision's libjpeg."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(raw, mode=ImageReadMode.GRAY)


def build_sample(task: str, rec: dict[str, Any], image: torch.Tensor, normalizer: dict) -> dict[str, Any]:
    """Decoded components (:func:`shards.record.decode_record` layout) + a transformed image ->
    the FORMAT.md sample (stay-level) or segment (hourly, with ``hours``/``bins``). Shared by the
    WebDataset and DALI readers so that both give the same dict."""
    meta, y = rec["meta"], rec["y"]
    multiclass = task_spec(task).is_multiclass
    out: dict[str, Any] = {
        "ehr": normalize_ehr(rec["ehr"], normalizer),
        "image": image,
        "has_image": bool(meta.get("has_image", rec.get("cxr") is not None)),
        "stay_id": int(meta["stay_id"]),
    }
    if rec.get("hours") is not None:
        out["y"] = torch.from_numpy(y.astype(np.int64 if multiclass else np.float32))
        out["hours"] = torch.from_numpy(rec["hours"].astype(np.float32))
        out["bins"] = torch.from_numpy(rec["bins"].astype(np.int64))
        out["sample_id"] = list(meta["sample_ids"])
        if "los_remaining_hours" in meta:
            out["los_hours"] = torch.tensor(meta["los_remaining_hours"], dtype=torch.float32)
    else:
        out["y"] = (
            torch.tensor(int(y.reshape(-1)[0])) if multiclass else torch.from_numpy(y.astype(np.float32))
        )
        out["sample_id"] = str(meta["sample_id"])
        if meta.get("los_remaining_hours") is not None:
            out["los_hours"] = float(meta["los_remaining_hours"])
    return out


class Decoder:
    """Record components -> one sequence-level sample (a stay-level sample or a whole segment)."""

    def __init__(self, task: str, normalizer: dict, transform: ImageTransform, seed: int = 0):
        self.task, self.normalizer, self.transform = task, normalizer, transform
        self.seed, self._worker = seed, None

    def _reseed_per_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else -1
        if wid != self._worker:
            self._worker = wid
            self.transform.reseed(self.seed * 1009 + wid + 1)

    def __call__(self, parts: dict[str, Any]) -> dict[str, Any]:
        self._reseed_per_worker()
        key = parts.get("__key__", "?")
        try:
            rec = decode_record({k: v for k, v in parts.items() if not k.startswith("__")})
        except (KeyError, ValueError) as err:
            raise RecordError(f"record {key} in {parts.get('__url__')}: {err!r}") from err
        cxr = rec["cxr"]
        image = self.transform(decode_image(cxr)) if cxr is not None else blank_image(self.transform.cfg)
        return build_sample(self.task, rec, image, self.normalizer)


def expand_hourly(segment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One decoded segment -> its K hourly samples (FORMAT.md sample dicts), in hour order.

    Sample k sees the first ``bins[k]`` EHR rows (one zero row when that is 0) and shares the
    segment's image; stay-level samples pass through unchanged.
    """
    if "hours" not in segment:
        yield segment
        return
    ehr = segment["ehr"]
    for k, n in enumerate(segment["bins"].tolist()):
        sample = {
            "ehr": ehr[:n] if n > 0 else torch.zeros(1, ehr.shape[1]),
            "image": segment["image"],
            "has_image": segment["has_image"],
            "y": segment["y"][k],
            "sample_id": segment["sample_id"][k],
            "stay_id": segment["stay_id"],
        }
        if "los_hours" in segment:
            sample["los_hours"] = float(segment["los_hours"][k])
        yield sample


def _expand(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for segment in src:
        yield from expand_hourly(segment)


# ---------------------------------------------------------------- collate


def _pad_ehr(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.zeros(len(seqs), int(lengths.max()), seqs[0].shape[1], dtype=torch.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Sample mode batch (FORMAT.md): ehr/ehr_len/image/has_image/y/sample_id[/los_hours]."""
    ehr, ehr_len = _pad_ehr([b["ehr"] for b in batch])
    out: dict[str, Any] = {
        "ehr": ehr,
        "ehr_len": ehr_len,
        "image": torch.stack([b["image"] for b in batch]),
        "has_image": torch.tensor([bool(b["has_image"]) for b in batch]),
        "sample_id": [b["sample_id"] for b in batch],
    }
    ys = [b["y"] for b in batch]
    out["y"] = torch.stack(ys) if ys[0].ndim else torch.stack(ys).to(torch.int64)
    if "los_hours" in batch[0]:
        out["los_hours"] = torch.tensor([b["los_hours"] for b in batch], dtype=torch.float32)
    return out


def collate_sequences(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Sequence mode batch (FORMAT.md): per segment EHR + ``hour_index``/``y``/``y_mask`` [B, K]."""
    ehr, ehr_len = _pad_ehr([b["ehr"] for b in batch])
    k_max = max(len(b["bins"]) for b in batch)
    n = len(batch)
    hour_index = torch.zeros(n, k_max, dtype=torch.int64)
    y_mask = torch.zeros(n, k_max, dtype=torch.bool)
    y0 = batch[0]["y"]
    y = torch.zeros((n, k_max, *y0.shape[1:]), dtype=y0.dtype)
    los = torch.zeros(n, k_max, dtype=torch.float32) if "los_hours" in batch[0] else None
    for i, b in enumerate(batch):
        k = len(b["bins"])
        hour_index[i, :k] = (b["bins"] - 1).clamp(min=0)
        y_mask[i, :k] = True
        y[i, :k] = b["y"]
        if los is not None:
            los[i, :k] = b["los_hours"]
    out: dict[str, Any] = {
        "ehr": ehr,
        "ehr_len": ehr_len,
        "image": torch.stack([b["image"] for b in batch]),
        "has_image": torch.tensor([bool(b["has_image"]) for b in batch]),
        "hour_index": hour_index,
        "y": y,
        "y_mask": y_mask,
        "sample_id": [list(b["sample_id"]) for b in batch],
    }
    if los is not None:
        out["los_hours"] = los
    return out


# ---------------------------------------------------------------- pipeline


def rank_shards(manifest: dict, cfg: ReaderConfig, rank: int, world_size: int) -> list[str]:
    """Shard names (relative to the root) this rank reads."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if cfg.is_exact:
        return [s["name"] for s in eval_assignment(manifest, cfg.task, cfg.split, world_size)[rank]]
    names = sorted(s["name"] for s in split_info(manifest, cfg.task, cfg.split)["shards"])
    if len(names) < world_size:
        log.warning(
            "%s/%s has %d shards for %d ranks: every rank trains on all of them",
            cfg.task,
            cfg.split,
            len(names),
            world_size,
        )
        return names
    return names[rank::world_size]


def _shard_source(urls: list[str], shuffle: bool, repeat: bool, seed: int) -> Callable[[], Iterator[dict]]:
    def source() -> Iterator[dict]:
        rng = random.Random(seed)
        for _ in count() if repeat else range(1):
            order = list(urls)
            if shuffle:
                rng.shuffle(order)
            yield from ({"url": u} for u in order)

    return source


def _no_listings(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Options for opening one shard of an object store without the directory-listing cache.

    The manifest names every shard, so a reader never needs a listing; but fsspec shares one
    filesystem instance per process, and a listing made by anyone else before a shard was
    committed would make its open fail with FileNotFoundError. A separate instance without the
    cache asks the store itself (one HEAD per shard)."""
    if fsspec.utils.get_protocol(url) in ("file", "local"):
        return storage_options
    return {"use_listings_cache": False, **storage_options}


def _open_with_fsspec(storage_options: dict[str, Any], handler: Callable[[Exception], bool]):
    def stage(src: Iterator[dict]) -> Iterator[dict]:
        for item in src:
            try:
                stream = fsspec.open(item["url"], "rb", **_no_listings(item["url"], storage_options)).open()
            except Exception as exn:  # noqa: BLE001 - the handler decides (eval: reraise)
                exn.args = (*exn.args, item["url"])
                if handler(exn):
                    continue
                break
            try:
                yield {**item, "stream": stream}
            finally:
                stream.close()

    return stage


def shard_dataset(
    root: str,
    cfg: ReaderConfig,
    rank: int = 0,
    world_size: int = 1,
    manifest: dict | None = None,
) -> wds.DataPipeline:
    """An IterableDataset of decoded samples (sample mode) or segments (sequence mode)."""
    manifest = manifest or read_manifest(root)
    task_info = manifest["tasks"].get(cfg.task)
    if task_info is None:
        raise ValueError(f"task {cfg.task!r} not in the shard set at {root}")
    if cfg.mode == "sequence" and not task_spec(cfg.task).hourly:
        raise ValueError(f"sequence mode is for hourly tasks {HOURLY_TASKS}, not {cfg.task!r}")
    handler = log_and_continue if cfg.is_train else reraise
    seed = cfg.seed * 7919 + rank
    decoder = Decoder(cfg.task, task_info["normalizer"], ImageTransform(cfg.is_train, cfg.image), seed)
    stages: list[Any] = [*_record_stages(root, cfg, rank, world_size, manifest)]
    stages.append(wds.map(decoder, handler=handler))
    if cfg.mode == "sample" and task_spec(cfg.task).hourly:
        stages.append(_expand)
        if cfg.is_train:
            stages.append(wds.shuffle(cfg.shuffle_buffer, rng=random.Random(seed + 1)))
    return wds.DataPipeline(*stages)


def _record_stages(root: str, cfg: ReaderConfig, rank: int, world_size: int, manifest: dict) -> list[Any]:
    """Shard list -> fsspec streams -> tar members grouped by record key (-> shuffle when training)."""
    handler = log_and_continue if cfg.is_train else reraise
    urls = [join(root, name) for name in rank_shards(manifest, cfg, rank, world_size)]
    seed = cfg.seed * 7919 + rank
    stages: list[Any] = [
        _shard_source(urls, cfg.is_train, cfg.repeat, seed),
        wds.split_by_worker,
        _open_with_fsspec(cfg.storage_options, handler),
        _expander(handler),
    ]
    if cfg.paired_only:  # before decoding and shuffling: unpaired records cost nothing
        stages.append(wds.select(lambda rec: rec.get("cxr.jpg") is not None))
    if cfg.is_train:
        stages.append(
            wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 64), rng=random.Random(seed))
        )
    return stages


def record_stream(
    root: str, cfg: ReaderConfig, rank: int = 0, world_size: int = 1, manifest: dict | None = None
) -> wds.DataPipeline:
    """This rank's undecoded records (``{"ehr.npy": bytes, "cxr.jpg": bytes, ...}``) through
    fsspec, local or ``s3://``: what a reader that decodes elsewhere (DALI's external source)
    consumes, in the same order and with the same shard plan as :func:`shard_dataset`."""
    manifest = manifest or read_manifest(root)
    return wds.DataPipeline(*_record_stages(root, cfg, rank, world_size, manifest))


def _expander(handler: Callable[[Exception], bool]):
    def stage(src: Iterator[dict]) -> Iterator[dict]:
        files = wds.tariterators.tar_file_expander(src, handler=handler)
        return wds.tariterators.group_by_keys(files, handler=handler)

    return stage


def make_loader(
    root: str,
    cfg: ReaderConfig,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    manifest: dict | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over :func:`shard_dataset` with the FORMAT.md collate of ``cfg.mode``."""
    ds = shard_dataset(root, cfg, rank, world_size, manifest)
    collate = collate_sequences if cfg.mode == "sequence" else collate_samples
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, persistent_workers=False
    )
