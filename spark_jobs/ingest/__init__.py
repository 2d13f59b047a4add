"""Bronze: raw MIMIC-IV / MIMIC-CXR tables -> typed Delta tables, with a quarantine.

Every non-blank value that does not parse, every row without the ids the benchmark joins on and
every line with the wrong number of fields goes to the quarantine with a reason, so that rows in
= rows kept + rows rejected holds for every table. Failures about input files (missing table,
header without a declared column, truncated gzip) are raised as :class:`IngestError` subclasses
that name the file, not as a Java traceback.

The package is split along what changes for different reasons:

- :mod:`~spark_jobs.ingest.files`: file-system access (Spark's Hadoop FileSystem, so local,
  HDFS and S3 alike) and where each table is (layout detection, :func:`locate`);
- :mod:`~spark_jobs.ingest.staging`: raw readers and the pure parsing / typing / tagging
  transforms (:func:`stage_rows`, :func:`unstage`);
- :mod:`~spark_jobs.ingest.arrow_csv`: the raw events csv parsed by Arrow inside the Spark
  task, rows of unused items dropped and counted there (``IngestConfig.reader``);
- :mod:`~spark_jobs.ingest.errors`: :class:`IngestError` and the translation of Java failures;
- :mod:`~spark_jobs.ingest.writer`: staging, bronze and quarantine writes, tables side by side;
- :mod:`~spark_jobs.ingest.job`: :class:`IngestConfig` and :func:`run`, the stage itself.
"""

from spark_jobs.ingest.errors import CorruptInputError, HeaderError, IngestError, MissingInputError
from spark_jobs.ingest.files import Located, detect_layout, locate, resolve_layout
from spark_jobs.ingest.job import (
    DEFAULT_TABLES,
    EVENT_TABLES,
    READERS,
    IngestConfig,
    default_metadata,
    run,
)
from spark_jobs.ingest.staging import (
    REQUIRED_IDS,
    STAGE,
    item_wanted,
    keep_wanted,
    read_raw,
    stage_rows,
    unstage,
)
from spark_jobs.ingest.writer import QUARANTINE, bronze_path, staging_path

__all__ = [
    "DEFAULT_TABLES",
    "EVENT_TABLES",
    "QUARANTINE",
    "READERS",
    "REQUIRED_IDS",
    "STAGE",
    "CorruptInputError",
    "HeaderError",
    "IngestConfig",
    "IngestError",
    "Located",
    "MissingInputError",
    "bronze_path",
    "default_metadata",
    "detect_layout",
    "item_wanted",
    "keep_wanted",
    "locate",
    "read_raw",
    "resolve_layout",
    "run",
    "stage_rows",
    "staging_path",
    "unstage",
]
