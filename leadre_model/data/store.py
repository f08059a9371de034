"""On-disk world: one Parquet file per record type plus a JSON manifest.

Why Parquet: typed columns (no re-parsing of numbers), compressed, written and read in
row groups so a million-user world streams with bounded memory, and readable by every
data tool (pandas, polars, DuckDB, Spark) without our code.

Every write goes to a temporary file in the target directory and is renamed into place
only when complete, so a crash or a validation error never leaves half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from leadre_model.data.records import RECORD_TYPES, Ad, Behavior, ContentItem, User

SCHEMAS: dict[str, pa.Schema] = {
    "ads": pa.schema(
        [
            ("ad_id", pa.string()),
            ("name", pa.string()),
            ("product_type", pa.string()),
            ("category_l1", pa.string()),
            ("category_l2", pa.string()),
            ("attributes", pa.list_(pa.string())),
            ("advertiser_id", pa.string()),
            ("ecpm", pa.float64()),
            ("bid", pa.float64()),
            ("status", pa.string()),
        ]
    ),
    "content": pa.schema(
        [
            ("content_id", pa.string()),
            ("title", pa.string()),
            ("category", pa.string()),
            ("spu", pa.string()),
        ]
    ),
    "users": pa.schema(
        [
            ("user_id", pa.string()),
            ("age", pa.int16()),
            ("gender", pa.string()),
            ("residence", pa.string()),
            ("education", pa.string()),
            ("occupation", pa.string()),
            ("consumption_level", pa.string()),
            ("arpu", pa.float64()),
        ]
    ),
    "behaviors": pa.schema(
        [
            ("user_id", pa.string()),
            ("ts", pa.int64()),
            ("domain", pa.string()),
            ("action", pa.string()),
            ("item_id", pa.string()),
        ]
    ),
}
MANIFEST = "world.json"


def table_path(world: Path, kind: str) -> Path:
    if kind not in SCHEMAS:
        raise KeyError(f"unknown table {kind!r}; expected one of {sorted(SCHEMAS)}")
    return Path(world) / f"{kind}.parquet"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``final``; on success swap it in for ``final``
    (the old one is removed), so readers never see a mix of old and new files."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class TableWriter:
    """Streams column batches of one record type into a Parquet file, atomically."""

    def __init__(self, world: Path, kind: str, row_group_size: int = 262_144) -> None:
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self.final = table_path(world, kind)
        self.rows = 0
        self._ctx = atomic_path(self.final)
        self._row_group_size = row_group_size
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> Self:
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        return self

    def write_columns(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Append one batch given as ``{column: values}`` (lists or numpy arrays)."""
        assert self._writer is not None, "use TableWriter as a context manager"
        table = pa.Table.from_pydict(dict(columns), schema=self.schema)
        self._writer.write_table(table, row_group_size=self._row_group_size)
        self.rows += table.num_rows

    def write_records(self, records: Sequence[Ad | ContentItem | User | Behavior]) -> None:
        if not records:
            return
        rows = [r.model_dump(mode="json") for r in records]
        self.write_columns({name: [row[name] for row in rows] for name in self.schema.names})

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._writer is not None
        self._writer.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_records(world: Path, kind: str, records: Sequence[Any]) -> int:
    with TableWriter(world, kind) as w:
        w.write_records(records)
    return w.rows


def read_table(world: Path, kind: str, columns: list[str] | None = None) -> pa.Table:
    path = table_path(world, kind)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table (build the world first)")
    return pq.read_table(path, columns=columns)


def iter_batches(
    world: Path, kind: str, batch_size: int = 65_536, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    path = table_path(world, kind)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table (build the world first)")
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def iter_records(world: Path, kind: str, batch_size: int = 65_536) -> Iterator[Any]:
    """Yield validated pydantic records (convenient for small worlds and tests)."""
    model = RECORD_TYPES[kind]
    for batch in iter_batches(world, kind, batch_size):
        for row in batch.to_pylist():
            yield model.model_validate({k: v for k, v in row.items() if v is not None})


def load_ads(world: Path) -> list[Ad]:
    return list(iter_records(world, "ads"))


def write_manifest(world: Path, manifest: Mapping[str, Any]) -> None:
    with atomic_path(Path(world) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True))


def read_manifest(world: Path) -> dict[str, Any]:
    path = Path(world) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())


class WorldWriter:
    """Stages the four tables of a world near ``out`` and moves them in only on success.

    Use as a context manager; call :meth:`add` for every record and set :attr:`manifest`.
    If the block raises (for example :class:`DataValidationError`), the staging directory is
    removed and ``out`` is left exactly as it was. Otherwise every table (empty ones too,
    so no stale table of an older world survives) and then ``world.json`` are renamed into
    ``out``; ``counts`` in the manifest is filled in from what was written.
    """

    def __init__(self, out: Path, batch_size: int = 65_536) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"{self.out}: exists and is not a directory")
        self.batch_size = batch_size
        self.manifest: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._staging: Path | None = None
        self._writers: dict[str, TableWriter] = {}
        self._buffers: dict[str, list[Any]] = {kind: [] for kind in SCHEMAS}

    def __enter__(self) -> Self:
        # Stage in the nearest existing ancestor, so a failed run creates no directories.
        base = self.out.resolve().parent
        while not base.is_dir():
            base = base.parent
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=base))
        for kind in SCHEMAS:
            self._writers[kind] = TableWriter(self._staging, kind).__enter__()
        return self

    def add(self, kind: str, record: BaseModel) -> None:
        buf = self._buffers[kind]
        buf.append(record)
        if len(buf) >= self.batch_size:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        self._writers[kind].write_records(self._buffers[kind])
        self._buffers[kind] = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._staging is not None
        try:
            if exc_type is None:
                try:
                    for kind in SCHEMAS:
                        self._flush(kind)
                except BaseException as err:
                    self._close_writers(type(err), err, err.__traceback__)
                    raise
            self._close_writers(exc_type, exc, tb)
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _close_writers(self, *exc_info: Any) -> None:
        for writer in self._writers.values():
            writer.__exit__(*exc_info)

    def _commit(self) -> None:
        assert self._staging is not None
        self.counts = {kind: w.rows for kind, w in self._writers.items()}
        self.out.mkdir(parents=True, exist_ok=True)
        for kind in SCHEMAS:
            os.replace(table_path(self._staging, kind), table_path(self.out, kind))
        self.manifest = {**self.manifest, "counts": self.counts}
        write_manifest(self.out, self.manifest)
