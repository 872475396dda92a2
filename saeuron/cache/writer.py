"""Writing a store: whole-chunk appends, units buffered and committed in large writes, and recovery of a killed run's file."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..concept_set import ConceptSet
from ..errors import UserError
from .store import FORMAT, FORMAT_VERSION, PROVENANCE, PROVENANCE_CHUNK, committed_rows, dataset, open_read, read_prompt_table, write_prompt_table




def _chunk_rows(width: int, rows_per_call: int | None = None) -> int:
    """Rows per chunk: about 1 MiB of float16; a divisor of `rows_per_call` (one hook call's rows)
    within 4x of that size if there is one, so that each call's rows are whole chunks written without a copy."""
    target = int(max(64, min(1 << 16, (1 << 20) // (2 * width))))
    if rows_per_call:
        fits = [c for c in _divisors(rows_per_call) if target // 4 <= c <= target * 4]
        if fits:
            return max(fits)
    return target


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in small]


COMMIT_MB = 64  # default: units are buffered in memory and committed to disk in writes of about this size
COMMIT_SECONDS = 60.0  # ... or at least this often, so that a kill loses at most about a minute of work


class ChunkAppender:
    """Appends rows to one chunked, unfiltered dataset by writing whole raw chunks (H5Dwrite_chunk).

    An array that starts at a chunk boundary and holds whole chunks is kept by reference and
    written straight from its memory (a hook call's rows, when the chunk divides them); anything
    else is copied into a buffer that starts at a chunk boundary, whose last chunk is written padded
    (past the dataset's end) and kept for the next commit to rewrite. Skipping HDF5's selection
    and conversion path and the copy makes a commit cost about what the disk write costs.
    """

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.chunk = ds.chunks[0]
        n = ds.shape[0]
        self.base = n - n % self.chunk  # dataset row where the uncommitted rows start
        self.whole: list[np.ndarray] = []  # by reference, each whole chunks, in order from `base`
        self.whole_rows = 0
        self.buf = np.empty((self.chunk, *ds.shape[1:]), ds.dtype)  # follows the `whole` arrays
        self.fill = n - self.base
        if self.fill:
            self.buf[: self.fill] = ds[self.base : n]

    def append(self, rows: np.ndarray) -> None:
        """Queue rows for the next write: by reference when aligned whole chunks, else copied."""
        if self.fill == 0 and len(rows) % self.chunk == 0 and rows.dtype == self.ds.dtype and rows.flags.c_contiguous:
            self.whole.append(rows)
            self.whole_rows += len(rows)
            return
        end = self.fill + len(rows)
        if end > len(self.buf):
            grown = np.empty((-(-end // self.chunk) * self.chunk * 2, *self.buf.shape[1:]), self.buf.dtype)
            grown[: self.fill] = self.buf[: self.fill]
            self.buf = grown
        self.buf[self.fill : end] = rows
        self.fill = end

    def write(self) -> None:
        """Extend the dataset and write every queued chunk; keep a partial last chunk buffered."""
        if self.whole_rows + self.fill == 0:
            return
        self.ds.resize(self.base + self.whole_rows + self.fill, axis=0)
        row = self.base
        for block in self.whole + [self.buf[: -(-self.fill // self.chunk) * self.chunk]]:
            for lo in range(0, len(block), self.chunk):
                self.ds.id.write_direct_chunk((row + lo,) + (0,) * (block.ndim - 1), block[lo : lo + self.chunk].data)
            row += len(block)
        self.base += self.whole_rows
        self.whole, self.whole_rows = [], 0
        full = self.fill - self.fill % self.chunk
        if full:
            self.buf[: self.fill - full] = self.buf[full : self.fill]
            self.base += full
            self.fill -= full


class Writer:
    """Appends rows to one store file in SWMR mode; buffers finished units and commits them in large writes.

    Memory is bounded by `commit_bytes` plus one unit, whatever the number of prompts. A kill
    loses only the units not yet committed; `--resume` recomputes them.
    """

    def __init__(self, path: Path, commit_bytes: int = COMMIT_MB << 20, commit_seconds: float = COMMIT_SECONDS):
        self.f = h5py.File(path, "r+", libver="latest")
        self.names = json.loads(self.f.attrs["config"])["hookpoints"]
        self.f.swmr_mode = True
        self.commit_bytes, self.commit_seconds = commit_bytes, commit_seconds
        self.rows = {hp: int(self.f["acts"][hp].shape[0]) for hp in self.names}  # including buffered rows
        self._acts = {hp: ChunkAppender(self.f["acts"][hp]) for hp in self.names}
        self._prov = {hp: {key: ChunkAppender(self.f["rows"][hp][key]) for key in PROVENANCE} for hp in self.names}
        self._buffered_bytes = 0
        self._pending_units: list[list[int]] = []  # cumulative rows after each finished, uncommitted unit
        self._last_commit = time.monotonic()

    @staticmethod
    def create(path: Path, config_json: str, prompts: ConceptSet, widths: dict[str, int], rows_per_call: dict[str, int] | None = None) -> None:
        """Write an empty store (structure, prompts, config) to `path`; chunks sized to the rows one hook call emits."""
        with h5py.File(path, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_json
            write_prompt_table(f, prompts)
            for hp, width in widths.items():
                per_call = (rows_per_call or {}).get(hp)
                chunk = _chunk_rows(width, per_call)
                f.create_dataset(f"acts/{hp}", shape=(0, width), maxshape=(None, width), chunks=(chunk, width), dtype=np.float16)
                prov_chunk = chunk if per_call and per_call % chunk == 0 else PROVENANCE_CHUNK  # same rows: written without a copy
                for key, dt in PROVENANCE.items():
                    f.create_dataset(f"rows/{hp}/{key}", shape=(0,), maxshape=(None,), chunks=(prov_chunk,), dtype=dt)
            f.create_dataset("progress", shape=(0, len(widths)), maxshape=(None, len(widths)), chunks=(1024, len(widths)), dtype=np.int64)

    def append(self, hp: str, acts: np.ndarray, prov: dict[str, np.ndarray]) -> None:
        """Buffer rows of the current unit (written to disk at the next commit)."""
        self._acts[hp].append(acts)
        for key in PROVENANCE:
            self._prov[hp][key].append(prov[key])
        self._buffered_bytes += acts.nbytes + sum(v.nbytes for v in prov.values())
        self.rows[hp] += len(acts)

    def end_unit(self) -> None:
        """Mark the current unit finished; commit if the buffer is large or old enough."""
        self._pending_units.append([self.rows[hp] for hp in self.names])
        if self._buffered_bytes >= self.commit_bytes or time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Write the buffered rows, make them durable, then record their units as done."""
        if not self._pending_units:
            return
        self._write_rows()
        self._write_progress()
        self._pending_units.clear()
        self._buffered_bytes = 0
        self._last_commit = time.monotonic()

    def _write_rows(self) -> None:
        """Append the buffered rows to their datasets and flush them."""
        for hp in self.names:
            self._acts[hp].write()
            for appender in self._prov[hp].values():
                appender.write()
        self.f.flush()  # rows first: a progress row never points past durable rows

    def _write_progress(self) -> None:
        """Record the finished units whose rows are on disk."""
        prog = self.f["progress"]
        n = prog.shape[0]
        prog.resize(n + len(self._pending_units), axis=0)
        prog[n:] = self._pending_units
        self.f.flush()

    def close(self) -> None:
        """Close the file; buffered units of an unfinished run are dropped (not committed)."""
        self.f.close()

def copy_committed(src: Path, dst: Path, block_rows: int = 1 << 16) -> int:
    """Copy the committed units of `src` (maybe left open by a killed writer) into the fresh store `dst`."""
    with open_read(src) as f, h5py.File(dst, "r+", libver="latest") as g:
        done, committed = committed_rows(f)
        names = json.loads(f.attrs["config"])["hookpoints"]
        for hp in names:
            n = committed[hp]
            datasets = [(dataset(f, f"acts/{hp}"), g["acts"][hp])] + [(dataset(f, f"rows/{hp}/{k}"), g["rows"][hp][k]) for k in PROVENANCE]
            for s, d in datasets:
                d.resize(n, axis=0)
                for lo in range(0, n, block_rows):
                    d[lo : min(lo + block_rows, n)] = s[lo : min(lo + block_rows, n)]
        g["progress"].resize(done, axis=0)
        if done:
            g["progress"][:] = dataset(f, "progress")[:done]
    return done



def prepare_store(out: Path, config_json: str, prompts: ConceptSet, widths: dict[str, int], rows_per_call: dict[str, int], resume: bool, total_units: int) -> int:
    """Create or recover the store file at `out`; the number of units already done."""
    if out.exists() and not resume:
        raise UserError(f"{str(out)!r} already exists; pass --resume to continue it, or choose another --out")
    done = 0
    if out.exists():  # validate before writing anything
        with open_read(out) as f:
            old, old_prompts = json.loads(f.attrs["config"]), read_prompt_table(f)
        new = json.loads(config_json)
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise UserError(f"cannot resume {str(out)!r}: it was written with a different config ({diff}); use the same options or another --out")
        if (old_prompts.kinds, old_prompts.rows) != (prompts.kinds, prompts.rows):
            raise UserError(f"cannot resume {str(out)!r}: its prompt list differs from the one given; use the same prompts or another --out")
    tmp = out.with_name(out.name + ".tmp")
    try:
        Writer.create(tmp, config_json, prompts, widths, rows_per_call)
        if out.exists():
            # a writer killed while the file was open leaves it flagged as open: rebuild it from its committed units
            done = copy_committed(out, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return min(done, total_units)
