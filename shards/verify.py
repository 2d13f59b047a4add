"""Check a shard set against its manifest (files only, no Spark).

    python -m shards.verify PATH

Checks: every listed shard and index exists with the listed size and sha256; each index equals
the one rebuilt from its tar; record/sample/image counts per shard and per split add up; no
sample id appears twice. Exit 0 when all hold, 1 with one line per problem otherwise, 2 for a bad
command line. ``python -m spark_jobs.verify_shards PATH`` runs these checks and also compares the
shards with the gold Delta tables (every gold sample exactly once).
"""

from __future__ import annotations

import json
import logging
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec

from conf.tasks import task_spec
from shards.manifest import ManifestError, read_manifest
from shards.store import IDX_VERSION, join, sha256_url

log = logging.getLogger("medmod.shards.verify")
MAX_LISTED = 5


def _records(url: str) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """(key, {ext: bytes}, index entries) per record of a tar, streamed."""
    with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
        key, parts, entries = None, {}, []
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            k, ext = base.split(".", 1)
            if key is not None and k != key:
                yield key, parts, entries
                parts, entries = {}, []
            key = k
            parts[ext] = tf.extractfile(m).read()
            entries.append(f"{ext} {m.offset_data} {m.size} {m.name}")
        if key is not None:
            yield key, parts, entries


def check_shard(root: str, shard: dict[str, Any], hourly: bool) -> tuple[list[str], list[str]]:
    """(problems, sample ids) of one shard."""
    problems: list[str] = []
    url = join(root, shard["name"])
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return [f"{shard['name']}: listed in the manifest but missing"], []
    if fs.size(path) != shard["size"]:
        problems.append(f"{shard['name']}: size {fs.size(path)} != manifest {shard['size']}")
    if sha256_url(url) != shard["sha256"]:
        return [
            *problems,
            f"{shard['name']}: sha256 differs from the manifest (modified or half-written)",
        ], []
    ids: list[str] = []
    lines, n_rec, n_img = [], 0, 0
    try:
        for _, parts, entries in _records(url):
            meta = json.loads(parts["meta.json"])
            sids = meta["sample_ids"] if hourly else [meta["sample_id"]]
            ids += sids
            n_rec += 1
            n_img += len(sids) * int("cxr.jpg" in parts)
            lines.append(" ".join(entries))
    except (tarfile.TarError, KeyError, ValueError) as err:
        return [*problems, f"{shard['name']}: unreadable record: {err!r}"], ids
    for what, got in (("records", n_rec), ("samples", len(ids)), ("with_image", n_img)):
        if got != shard[what]:
            problems.append(f"{shard['name']}: {what} {got} != manifest {shard[what]}")
    index = f"{IDX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n"
    idx_url = join(root, shard["index"])
    try:
        with fsspec.open(idx_url, "rb") as fh:
            if fh.read().decode() != index:
                problems.append(f"{shard['index']}: does not match its tar")
    except FileNotFoundError:
        problems.append(f"{shard['index']}: missing")
    return problems, ids


def check_files(root: str, manifest: dict[str, Any]) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """Problems and the sample ids per (task, split) found in the shards."""
    problems: list[str] = []
    found: dict[tuple[str, str], list[str]] = {}
    for task, info in sorted(manifest["tasks"].items()):
        for split, entry in sorted(info["splits"].items()):
            ids: list[str] = []
            for shard in entry["shards"]:
                p, sids = check_shard(root, shard, task_spec(task).hourly)
                problems += p
                ids += sids
            found[(task, split)] = ids
            for what in ("records", "samples", "with_image"):
                total = sum(s[what] for s in entry["shards"])
                if total != entry[what]:
                    problems.append(f"{task}/{split}: {what} {entry[what]} != sum over shards {total}")
            dup = [s for s, c in Counter(ids).items() if c > 1]
            if dup:
                problems.append(
                    f"{task}/{split}: {len(dup)} sample ids more than once, e.g. {dup[:MAX_LISTED]}"
                )
    return problems, found


def inspect(root: str) -> tuple[list[str], dict[str, Any] | None, dict[tuple[str, str], list[str]]]:
    """(problems, manifest, sample ids found per (task, split)); no problems: complete and intact."""
    try:
        manifest = read_manifest(root)
    except ManifestError as err:
        return [str(err)], None, {}
    problems, found = check_files(root, manifest)
    return problems, manifest, found


def verify(root: str) -> list[str]:
    """All problems found (empty: the shard set is complete and intact)."""
    return inspect(root)[0]


def report(root: str, problems: list[str], manifest: dict[str, Any] | None, tool: str) -> int:
    """Print the outcome of a check as the commands do; returns the exit status."""
    if problems or manifest is None:
        print(f"{tool}: {root}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    n = sum(e["samples"] for t in manifest["tasks"].values() for e in t["splits"].values())
    print(f"{tool}: {root}: OK ({len(manifest['tasks'])} tasks, {n:,} samples)")
    return 0


def command_words(argv: list[str] | None, usage: str) -> list[str] | int:
    """The words of a verify command, logging set up; an int is the exit status of a help request
    (0) or of a missing shard path (2)."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = command_words(argv, __doc__)
    if isinstance(args, int):
        return args
    if len(args) > 1:
        print(
            f"error: unknown argument(s) {args[1:]}: shards.verify checks files only; for the check "
            "against the gold tables run python -m spark_jobs.verify_shards PATH [tables=PATH]",
            file=sys.stderr,
        )
        return 2
    problems, manifest, _ = inspect(args[0])
    return report(args[0], problems, manifest, "shards.verify")


if __name__ == "__main__":
    raise SystemExit(main())
