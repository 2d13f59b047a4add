"""RELIABILITY.md, security: no file this project reads can run code when read (checkpoints load
``weights_only``, shard records hold no pickles), configs name code only through registries, and
credentials never travel through a config (which is logged and stamped on every Delta commit)."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conf.typed import ConfigError
from shards.reader import ReaderConfig, RecordError, shard_dataset
from shards.tiny import tiny_dataset
from trainer import checkpoint as ckpt
from trainer.models.pretrained import PretrainedError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
CODE = ("conf", "shards", "spark_jobs", "trainer", "scripts")


class _Planted:
    """Unpickling this creates ``path``: the proof that a loader ran code from a file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for d in CODE for p in sorted((REPO / d).rglob("*.py"))}


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    state = {k: 0 for k in ckpt.REQUIRED_KEYS} | {"model": {"w": torch.zeros(1)}, "model_name": "uni_ehr"}
    evil = tmp_path / "evil.pt"
    torch.save(state | {"model_config": _Planted(marker)}, evil)
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load(evil)
    with pytest.raises(PretrainedError, match="evil.pt"):
        read_checkpoint(evil, "uni_ehr")
    assert not marker.exists()
    # What the trainer itself stores (tensors, plain values, numpy's RNG state) still loads.
    good = tmp_path / "good.pt"
    ckpt.save_atomic(state | {"model_config": {}, "rng": [{"numpy": np.random.get_state()}]}, good)
    assert ckpt.load(good)["rng"][0]["numpy"][0] == "MT19937"


def test_no_loader_in_the_code_unpickles():
    unsafe = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|torch\.load\(")
    found = {
        f"{p.relative_to(REPO)}:{i}": line.strip()
        for p, text in _sources().items()
        for i, line in enumerate(text.splitlines(), 1)
        if unsafe.search(line)
    }
    # Every torch.load says weights_only=True (trainer.checkpoint.safe_load adds its allow-list).
    assert found and all("torch.load(" in line and "weights_only=True" in line for line in found.values()), (
        found
    )


def test_shard_records_hold_no_pickles(tmp_path):
    root = tmp_path / "ds"
    manifest = tiny_dataset(str(root), tasks=("ihm", "decomp"), records=4, records_per_shard=2)
    shards = [
        root / s["name"]
        for t in manifest["tasks"].values()
        for sp in t["splits"].values()
        for s in sp["shards"]
    ]
    assert shards
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                ext = m.name.split(".", 1)[1]
                assert ext in {"ehr.npy", "y.npy", "hours.npy", "bins.npy", "meta.json", "cxr.jpg"}, m.name
                if ext.endswith(".npy"):
                    np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
    # A planted object array (a pickle inside a .npy) is refused by the reader, never unpickled.
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.save(buf, np.array([_Planted(marker)], dtype=object), allow_pickle=True)
    shard = root / manifest["tasks"]["ihm"]["splits"]["val"]["shards"][0]["name"]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = buf.getvalue() if m.name.endswith(".y.npy") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(RecordError, match="allow_pickle"):
        list(shard_dataset(str(root), ReaderConfig(task="ihm", split="val")))
    assert not marker.exists()


def test_configs_name_code_only_through_registries():
    dynamic = re.compile(r"import_module|__import__|(?<![.\w])eval\(|(?<![.\w])exec\(|pydoc\.locate|_target_")
    found = [f"{p.relative_to(REPO)}" for p, text in _sources().items() if dynamic.search(text)]
    assert found == []
    from spark_jobs.pipeline import load_config
    from trainer.config import load_run_config
    from trainer.runtime import build_model

    with pytest.raises(ConfigError, match="unknown model 'os.system'; registered: .*uni_ehr"):
        build_model(load_run_config(["task=ihm", "model.name=os.system"]))
    with pytest.raises(ConfigError, match="unknown stage"):
        load_config(["stages=[os.system]"])


@pytest.mark.parametrize(
    "key",
    ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.session.token"],
)
def test_credentials_in_a_config_are_refused(key):
    from spark_jobs.pipeline import load_config

    with pytest.raises(ConfigError, match="environment"):
        load_config([f"spark.extra={{{key}: x}}"])
