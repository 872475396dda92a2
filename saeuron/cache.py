"""The HDF5 activation store: write hookpoint activations while sampling, resume, stream shuffled batches.

Layout of one store file (h5py, libver='latest', written in SWMR mode so readers can follow a run):

    attrs: format='saeuron-activations', format_version, config (JSON of CacheConfig)
    prompts/{text,style,object}      the prompt table with concept labels ('' when unknown)
    acts/<hookpoint>                 float16 (rows, width), chunked: one row per token vector
    rows/<hookpoint>/{prompt,seed,step,timestep,branch,position}   provenance of every row
    progress                         int64 (units done, hookpoints): cumulative rows after each unit

A unit is one batch of (prompt, seed) pairs. Its rows are flushed before its `progress` row is
written, so rows past the last `progress` row belong to an unfinished unit: readers ignore them
and `--resume` drops them. A run split over processes (RANK / WORLD_SIZE) writes a folder of
shards with a `manifest.json`; readers follow the manifest.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import numpy as np
import torch

from .errors import UserError
from .hooks import BRANCH_CHOICES, CAPTURE_CHOICES, Capture, get_hookpoint
from .pipelines import CFG_BRANCHES, MINICANVAS, SamplerConfig, check_prompts, default_guidance, sample

FORMAT = "saeuron-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE = {"prompt": np.int32, "seed": np.int64, "step": np.int16, "timestep": np.int16, "branch": np.int8, "position": np.int32}
PROVENANCE_CHUNK = 1 << 16


@dataclass(frozen=True)
class CacheConfig:
    """What a caching run records: model, hookpoints, sampler, CFG branch, capture mode, steps and positions kept."""

    model: str = MINICANVAS
    hookpoints: tuple[str, ...] = ("up_blocks.1.attentions.1",)
    prompts: str = "minicanvas"  # 'minicanvas' or the prompt file it came from
    seeds: tuple[int, ...] = (0,)
    steps: int = 25
    cfg: float | None = None  # None: the model's default guidance, resolved (and recorded) when the run starts
    batch_size: int = 50
    branch: str = "cond"
    capture: str = "output"
    timesteps: str = "all"  # all | every:K | comma list of step indices
    positions: str = "all"  # all | random:K
    position_seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---------------------------------------------------------------- config parsing


def parse_timesteps(spec: str, steps: int) -> list[int]:
    """The step indices kept: 'all', 'every:K' (0, K, 2K, ...) or a comma list of step indices."""
    spec = spec.strip()
    if spec == "all":
        return list(range(steps))
    try:
        if spec.startswith("every:"):
            k = int(spec[len("every:") :])
            if k < 1:
                raise ValueError
            return list(range(0, steps, k))
        kept = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"bad --timesteps {spec!r}; give all, every:K (K >= 1) or step indices like 0,10,20") from None
    bad = [s for s in kept if not 0 <= s < steps]
    if not kept or bad:
        raise UserError(f"bad --timesteps {spec!r}: step indices must be in 0..{steps - 1} (steps={steps})")
    return kept


def parse_positions(spec: str) -> int | None:
    """None for 'all', K for 'random:K'."""
    spec = spec.strip()
    if spec == "all":
        return None
    if spec.startswith("random:"):
        try:
            k = int(spec[len("random:") :])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise UserError(f"bad --positions {spec!r}; give all or random:K (K >= 1)")


def check_config(config: CacheConfig) -> None:
    """Refuse settings that cannot work, naming the bad value."""
    if config.branch not in BRANCH_CHOICES:
        raise UserError(f"unknown --branch {config.branch!r}; valid: {', '.join(BRANCH_CHOICES)}")
    if config.capture not in CAPTURE_CHOICES:
        raise UserError(f"unknown --capture {config.capture!r}; valid: {', '.join(CAPTURE_CHOICES)}")
    if config.steps < 1:
        raise UserError(f"steps must be >= 1, got {config.steps}")
    if config.batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {config.batch_size}")
    if not config.seeds:
        raise UserError("no seeds given")
    if not config.hookpoints:
        raise UserError("no hookpoints given")
    parse_timesteps(config.timesteps, config.steps)
    parse_positions(config.positions)


def prompt_table(prompts: Sequence[str | dict]) -> list[dict]:
    """Prompts as rows {prompt, style, object}; plain strings get empty concept labels."""
    rows = []
    for p in prompts:
        if isinstance(p, str):
            rows.append({"prompt": p, "style": "", "object": ""})
        else:
            rows.append({"prompt": str(p["prompt"]), "style": str(p.get("style", "") or ""), "object": str(p.get("object", "") or "")})
    if not rows:
        raise UserError("the prompt list is empty; give at least one prompt")
    return rows


# ---------------------------------------------------------------- opening


def _open_read(path: Path) -> h5py.File:
    """Open one store file for reading (SWMR), or one clear UserError if it is not a saeuron store."""
    if not path.is_file():
        raise UserError(f"activation store {str(path)!r} not found")
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError:
        try:  # a file not written with libver='latest' cannot be opened with swmr=True
            f = h5py.File(path, "r")
        except OSError:
            raise UserError(f"{str(path)!r} is not a readable HDF5 file (corrupt or not HDF5); give an activation store written by `saeuron cache`") from None
    try:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise UserError(f"{str(path)!r} is an HDF5 file but not a saeuron activation store (format attribute {fmt!r}, expected {FORMAT!r})")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise UserError(f"{str(path)!r} has store format version {version}; this saeuron reads version {FORMAT_VERSION}")
        missing = [k for k in ("prompts", "acts", "rows", "progress") if k not in f] + [k for k in ("config",) if k not in f.attrs]
        if missing:
            raise UserError(f"{str(path)!r} is a damaged activation store: missing {', '.join(missing)}")
    except UserError:
        f.close()
        raise
    except Exception as err:
        f.close()
        raise UserError(f"{str(path)!r} is a damaged activation store ({type(err).__name__}: {err})") from None
    return f


def _shard_paths(path: Path) -> list[Path]:
    """The store files of a store: the file itself, or the shards listed in a folder's manifest."""
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise UserError(f"{str(path)!r} is a folder without {MANIFEST}; give an activation store file or a sharded store folder")
        try:
            data = json.loads(manifest.read_text())
            shards = [path / s for s in data["shards"]]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{str(manifest)!r} is not a saeuron shard manifest (needs a 'shards' list)") from None
        if data.get("format") != FORMAT:
            raise UserError(f"{str(manifest)!r} is not a saeuron activation manifest (format {data.get('format')!r})")
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise UserError(f"shards listed in {str(manifest)!r} are missing: {', '.join(missing)}")
        return shards
    return [path]


def _committed(f: h5py.File) -> tuple[int, dict[str, int]]:
    """Units done and committed rows per hookpoint (rows past these belong to an unfinished unit)."""
    prog = _ds(f, "progress")
    names = json.loads(f.attrs["config"])["hookpoints"]
    n = prog.shape[0]
    last = prog[n - 1] if n else np.zeros(len(names), np.int64)
    return n, {hp: int(r) for hp, r in zip(names, last)}


def _ds(f: h5py.File, name: str) -> h5py.Dataset:
    """A dataset, refreshed so that a SWMR reader sees what the writer has flushed."""
    d = f[name]
    if f.swmr_mode:
        d.refresh()
    return d


def _read_prompts(f: h5py.File) -> list[dict]:
    g = f["prompts"]
    cols = {k: [x.decode() if isinstance(x, bytes) else str(x) for x in g[k][()]] for k in ("text", "style", "object")}
    return [{"prompt": t, "style": s, "object": o} for t, s, o in zip(cols["text"], cols["style"], cols["object"])]


@dataclass
class StoreInfo:
    """What a store holds: its config, prompts, hookpoints with widths and committed row counts."""

    path: str
    format_version: int
    config: dict
    prompts: list[dict]
    widths: dict[str, int]
    rows: dict[str, int]
    units_done: int
    units_total: int
    shards: list[str] = field(default_factory=list)

    @property
    def hookpoints(self) -> list[str]:
        return list(self.widths)

    @property
    def complete(self) -> bool:
        return self.units_done >= self.units_total


def _units_total(config: dict, n_prompts: int) -> int:
    return math.ceil(n_prompts * len(config["seeds"]) / config["batch_size"])


def open_store(path: str | Path) -> StoreInfo:
    """Metadata of a store file or sharded folder (no activations are read)."""
    path = Path(path)
    shards = _shard_paths(path)
    widths: dict[str, int] = {}
    rows: dict[str, int] = {}
    units = 0
    config = prompts = None
    for shard in shards:
        with _open_read(shard) as f:
            cfg = json.loads(f.attrs["config"])
            cfg.pop("rank", None), cfg.pop("world_size", None)
            if config is None:
                config, prompts = cfg, _read_prompts(f)
            elif cfg != config:
                raise UserError(f"shard {str(shard)!r} was written with a different config than {str(shards[0])!r}")
            done, committed = _committed(f)
            units += done
            for hp in cfg["hookpoints"]:
                widths[hp] = int(f["acts"][hp].shape[1])
                rows[hp] = rows.get(hp, 0) + committed[hp]
    return StoreInfo(str(path), FORMAT_VERSION, config, prompts, widths, rows, units, _units_total(config, len(prompts)), [str(s) for s in shards])


def _check_hookpoint(info: StoreInfo, hookpoint: str) -> None:
    if hookpoint not in info.widths:
        raise UserError(f"hookpoint {hookpoint!r} is not in {info.path!r}; it holds {', '.join(info.hookpoints)}")


# ---------------------------------------------------------------- reading


def row_provenance(path: str | Path, hookpoint: str, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Provenance columns (prompt, seed, step, timestep, branch, position) of committed rows, in store order."""
    info = open_store(path)
    _check_hookpoint(info, hookpoint)
    cols: dict[str, list] = {k: [] for k in PROVENANCE}
    for shard in info.shards:
        with _open_read(Path(shard)) as f:
            n = _committed(f)[1][hookpoint]
            for k in PROVENANCE:
                cols[k].append(_ds(f, f"rows/{hookpoint}/{k}")[:n])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    return out if rows is None else {k: v[rows] for k, v in out.items()}


def read_rows(path: str | Path, hookpoint: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Committed rows start:stop of a hookpoint as float32 (rows, width), in store order."""
    info = open_store(path)
    _check_hookpoint(info, hookpoint)
    stop = info.rows[hookpoint] if stop is None else min(stop, info.rows[hookpoint])
    parts, offset = [], 0
    for shard in info.shards:
        with _open_read(Path(shard)) as f:
            n = _committed(f)[1][hookpoint]
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                parts.append(_ds(f, f"acts/{hookpoint}")[lo:hi])
            offset += n
    width = info.widths[hookpoint]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32)) if parts else torch.zeros(0, width)


def _row_filter(info: StoreInfo, timesteps=None, steps=None, branch=None, concept=None, prompts=None) -> tuple[Callable[[dict], np.ndarray], tuple[str, ...]] | None:
    """(function from a block's provenance columns to a boolean mask, the columns it reads), or None when every row is kept."""
    tests: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []  # (column, test on that column)
    if timesteps is not None:
        tsel = np.array(sorted({int(t) for t in timesteps}))
        tests.append(("timestep", lambda c: np.isin(c, tsel)))
    if steps is not None:
        ssel = np.array(sorted({int(s) for s in steps}))
        tests.append(("step", lambda c: np.isin(c, ssel)))
    if branch is not None:
        if branch not in CFG_BRANCHES:
            raise UserError(f"unknown branch {branch!r}; valid: {', '.join(CFG_BRANCHES)}")
        b = CFG_BRANCHES.index(branch)
        tests.append(("branch", lambda c: c == b))
    if concept is not None:
        kind, name = concept
        if kind not in ("style", "object"):
            raise UserError(f"unknown concept kind {kind!r}; valid kinds: style, object")
        csel = np.array([i for i, row in enumerate(info.prompts) if row[kind] == name], dtype=np.int64)
        if csel.size == 0:
            present = sorted({row[kind] for row in info.prompts if row[kind]})
            raise UserError(f"no prompt of {kind} {name!r} in {info.path!r}; its {kind}s: {', '.join(present) or '(none labelled)'}")
        tests.append(("prompt", lambda c: np.isin(c, csel)))
    if prompts is not None:
        psel = np.unique(np.asarray(prompts, dtype=np.int64))
        tests.append(("prompt", lambda c: np.isin(c, psel)))
    if not tests:
        return None
    columns = tuple(dict.fromkeys(col for col, _ in tests))
    return (lambda p: np.logical_and.reduce([test(p[col]) for col, test in tests])), columns


def _provenance_blocks(info: StoreInfo, hookpoint: str, columns: Sequence[str], block_rows: int = PROVENANCE_CHUNK) -> Iterator[dict[str, np.ndarray]]:
    """The given provenance columns of the committed rows, block by block over the shards (bounded memory)."""
    for shard in info.shards:
        with _open_read(Path(shard)) as f:
            n = _committed(f)[1][hookpoint]
            cols = {k: _ds(f, f"rows/{hookpoint}/{k}") for k in columns}
            for lo in range(0, n, block_rows):
                yield {k: d[lo : min(lo + block_rows, n)] for k, d in cols.items()}


def prompts_with_rows(path: str | Path, hookpoint: str) -> np.ndarray:
    """The sorted distinct prompt indices of a hookpoint's committed rows."""
    info = open_store(path)
    _check_hookpoint(info, hookpoint)
    found = np.zeros(0, np.int64)
    for p in _provenance_blocks(info, hookpoint, ("prompt",)):
        found = np.union1d(found, p["prompt"])
    return found


def count_rows(path: str | Path, hookpoint: str, prompts: Sequence[int] | None = None, timesteps: Sequence[int] | None = None, **filters) -> int:
    """Committed rows of a hookpoint that pass the filters of `iter_batches` (reads provenance only)."""
    info = open_store(path)
    _check_hookpoint(info, hookpoint)
    keep = _row_filter(info, timesteps=timesteps, prompts=prompts, **filters)
    if keep is None:
        return info.rows[hookpoint]
    test, columns = keep
    return sum(int(test(p).sum()) for p in _provenance_blocks(info, hookpoint, columns))


def iter_batches(
    path: str | Path,
    hookpoint: str,
    batch_size: int = 4096,
    shuffle: bool = True,
    seed: int = 0,
    timesteps: Sequence[int] | None = None,
    branch: str | None = None,
    concept: tuple[str, str] | None = None,
    buffer_rows: int = 1 << 18,
    steps: Sequence[int] | None = None,
    drop_last: bool = False,
    prompts: Sequence[int] | None = None,
    epochs: int | None = 1,
) -> Iterator[torch.Tensor]:
    """Float32 batches (batch, width) of committed rows; shuffled through a buffer of at most ~buffer_rows rows.

    Shuffling reads whole chunks in random order into the buffer and permutes the buffer,
    so memory stays bounded by the buffer (or one batch, if larger) whatever the store's size.
    Filters: timestep values, step indices, CFG branch ('cond'/'uncond'), concept ('style',
    'neon'), prompt indices. `epochs=None` repeats forever, reshuffled each epoch; rows left
    over at the end of an epoch open the next, so every batch is full until the last, which
    `drop_last` drops when short. A selection without rows is a UserError.
    """
    if batch_size < 1 or buffer_rows < 1:
        raise UserError(f"batch_size and buffer_rows must be >= 1, got {batch_size} and {buffer_rows}")
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be >= 1 or None (endless), got {epochs}")
    info = open_store(path)
    _check_hookpoint(info, hookpoint)
    keep = _row_filter(info, timesteps, steps, branch, concept, prompts)
    rng = np.random.default_rng(seed)
    fill = max(buffer_rows, batch_size)
    files = [_open_read(Path(s)) for s in info.shards]
    try:
        blocks = []
        for fi, f in enumerate(files):
            n = _committed(f)[1][hookpoint]
            chunk = _ds(f, f"acts/{hookpoint}").chunks[0]
            for k in PROVENANCE:
                _ds(f, f"rows/{hookpoint}/{k}")
            step = max(chunk, (min(buffer_rows, 1 << 16) // chunk) * chunk) if not shuffle else chunk
            blocks += [(fi, s, min(s + step, n)) for s in range(0, n, step)]
        pending = np.zeros((0, info.widths[hookpoint]), np.float16)
        buffer: list[np.ndarray] = []
        filled = 0

        def drain(final: bool):
            nonlocal pending, filled
            data = np.concatenate([pending, *buffer]) if buffer else pending
            buffer.clear()
            if shuffle:
                data = data[rng.permutation(len(data))]
            full = (len(data) // batch_size) * batch_size
            for s in range(0, full, batch_size):
                yield torch.from_numpy(data[s : s + batch_size].astype(np.float32))
            pending = data[full:]
            filled = len(pending)
            if final and len(pending) and not drop_last:
                yield torch.from_numpy(pending.astype(np.float32))

        epoch = 0
        while epochs is None or epoch < epochs:
            selected = 0
            for i in rng.permutation(len(blocks)) if shuffle else range(len(blocks)):
                fi, lo, hi = blocks[i]
                f = files[fi]
                if keep is None:
                    acts = f["acts"][hookpoint][lo:hi]
                else:
                    test, columns = keep
                    g = f["rows"][hookpoint]
                    mask = test({k: g[k][lo:hi] for k in columns})  # only the columns the filter reads
                    if not mask.any():
                        continue
                    acts = f["acts"][hookpoint][lo:hi][mask]
                buffer.append(acts)
                filled += len(acts)
                selected += len(acts)
                if filled >= fill:
                    yield from drain(final=False)
            if selected == 0:
                given = [k for k, v in (("timesteps", timesteps), ("steps", steps), ("branch", branch), ("concept", concept), ("prompts", prompts)) if v is not None]
                if not given:
                    raise UserError(f"{info.path!r} holds no committed rows of {hookpoint!r} yet")
                raise UserError(f"no rows of {hookpoint!r} in {info.path!r} match the selection ({', '.join(given)}); widen it")
            epoch += 1
            yield from drain(final=epochs is not None and epoch == epochs)
    finally:
        for f in files:
            f.close()


# ---------------------------------------------------------------- writing


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


class _ChunkAppender:
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


class _Writer:
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
        self._acts = {hp: _ChunkAppender(self.f["acts"][hp]) for hp in self.names}
        self._prov = {hp: {key: _ChunkAppender(self.f["rows"][hp][key]) for key in PROVENANCE} for hp in self.names}
        self._buffered_bytes = 0
        self._pending_units: list[list[int]] = []  # cumulative rows after each finished, uncommitted unit
        self._last_commit = time.monotonic()

    @staticmethod
    def create(path: Path, config_json: str, prompts: list[dict], widths: dict[str, int], rows_per_call: dict[str, int] | None = None) -> None:
        """Write an empty store (structure, prompts, config) to `path`; chunks sized to the rows one hook call emits."""
        with h5py.File(path, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_json
            g = f.create_group("prompts")
            for key, col in (("text", "prompt"), ("style", "style"), ("object", "object")):
                g.create_dataset(key, data=[r[col] for r in prompts], dtype=h5py.string_dtype())
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

def _copy_committed(src: Path, dst: Path, block_rows: int = 1 << 16) -> int:
    """Copy the committed units of `src` (maybe left open by a killed writer) into the fresh store `dst`."""
    with _open_read(src) as f, h5py.File(dst, "r+", libver="latest") as g:
        done, committed = _committed(f)
        names = json.loads(f.attrs["config"])["hookpoints"]
        for hp in names:
            n = committed[hp]
            datasets = [(_ds(f, f"acts/{hp}"), g["acts"][hp])] + [(_ds(f, f"rows/{hp}/{k}"), g["rows"][hp][k]) for k in PROVENANCE]
            for s, d in datasets:
                d.resize(n, axis=0)
                for lo in range(0, n, block_rows):
                    d[lo : min(lo + block_rows, n)] = s[lo : min(lo + block_rows, n)]
        g["progress"].resize(done, axis=0)
        if done:
            g["progress"][:] = _ds(f, "progress")[:done]
    return done


def _dist() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate launch environment variables."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise UserError(f"bad RANK/WORLD_SIZE environment ({os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}); they must be integers") from None


def _prepare(out: Path, config_json: str, prompts: list[dict], widths: dict[str, int], rows_per_call: dict[str, int], resume: bool, total_units: int) -> int:
    """Create or recover the store file at `out`; the number of units already done."""
    if out.exists() and not resume:
        raise UserError(f"{str(out)!r} already exists; pass --resume to continue it, or choose another --out")
    done = 0
    if out.exists():  # validate before writing anything
        with _open_read(out) as f:
            old, old_prompts = json.loads(f.attrs["config"]), _read_prompts(f)
        new = json.loads(config_json)
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise UserError(f"cannot resume {str(out)!r}: it was written with a different config ({diff}); use the same options or another --out")
        if old_prompts != prompts:
            raise UserError(f"cannot resume {str(out)!r}: its prompt list differs from the one given; use the same prompts or another --out")
    tmp = out.with_name(out.name + ".tmp")
    try:
        _Writer.create(tmp, config_json, prompts, widths, rows_per_call)
        if out.exists():
            # a writer killed while the file was open leaves it flagged as open: rebuild it from its committed units
            done = _copy_committed(out, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return min(done, total_units)


def cache_activations(
    pipe,
    prompts: Sequence[str | dict],
    out: str | Path,
    config: CacheConfig,
    resume: bool = False,
    progress: bool = True,
    on_images: Callable[[int, torch.Tensor], None] | None = None,
    commit_mb: float = COMMIT_MB,
) -> Path:
    """Sample every prompt x seed and store the hookpoints' activations; resumable by units of one batch.

    Under torchrun / accelerate launch (WORLD_SIZE > 1) each process takes every WORLD_SIZE-th
    unit and `out` becomes a folder of shards with a manifest. `on_images(unit, images)` sees
    each batch's generated images. Finished units are committed in writes of about `commit_mb`
    MiB (0: after every unit) or once a minute. Returns the store path.
    """
    check_config(config)
    if not commit_mb >= 0:
        raise UserError(f"commit size must be >= 0 MiB, got {commit_mb!r}")
    table = prompt_table(prompts)
    check_prompts(pipe, [r["prompt"] for r in table])
    hps = [get_hookpoint(pipe, h) for h in config.hookpoints]
    config = CacheConfig(**{**asdict(config), "hookpoints": tuple(h.path for h in hps), "seeds": tuple(int(s) for s in config.seeds),
                            "cfg": float(config.cfg if config.cfg is not None else default_guidance(pipe))})
    kept_steps = parse_timesteps(config.timesteps, config.steps)
    k_pos = parse_positions(config.positions)
    too_many = [h.path for h in hps if k_pos is not None and k_pos > h.tokens]
    if too_many:
        raise UserError(f"--positions random:{k_pos} asks for more positions than {', '.join(too_many)} has tokens ({min(h.tokens for h in hps)})")
    pairs = [(pi, s) for pi in range(len(table)) for s in config.seeds]
    n_units = math.ceil(len(pairs) / config.batch_size)

    rank, world = _dist()
    out = Path(out)
    if world > 1:
        folder = out
        folder.mkdir(parents=True, exist_ok=True)
        shard_names = [f"shard-{r:04d}-of-{world:04d}.h5" for r in range(world)]
        # every rank writes the same manifest atomically: no rank waits for another
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "shards": shard_names, "config": asdict(config)}
        tmp_manifest = folder / f".{MANIFEST}.{rank}.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp_manifest, folder / MANIFEST)
        out = folder / shard_names[rank]
        my_units = list(range(rank, n_units, world))
        config_json = json.dumps({**asdict(config), "rank": rank, "world_size": world}, sort_keys=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        my_units = list(range(n_units))
        config_json = config.to_json()
    # a store's config JSON must round-trip through json so that tuples compare equal to lists
    config_json = json.dumps(json.loads(config_json), sort_keys=True)

    rows_per_call = {h.path: min(config.batch_size, len(pairs)) * (k_pos or h.tokens) for h in hps}
    done = _prepare(out, config_json, table, {h.path: h.width for h in hps}, rows_per_call, resume, len(my_units))
    if done >= len(my_units):
        return out.parent if world > 1 else out

    writer = _Writer(out, commit_bytes=int(commit_mb * 2**20))
    try:
        unit_start = 0  # index of the unit's first pair, read by the sink

        def sink(hp: str, step: int, timestep: int, branch: str, acts_btd: torch.Tensor) -> None:
            b, t, d = acts_btd.shape
            # a copy of its own (the writer may hold it until the next commit), one pass with the conversion
            acts = acts_btd.detach().to("cpu", torch.float16, copy=True).numpy()
            b_id = CFG_BRANCHES.index(branch)
            if k_pos is None:
                pos = np.broadcast_to(np.arange(t), (b, t))
                rows = np.ascontiguousarray(acts.reshape(-1, d))
            else:  # same positions for every hookpoint; reproducible on resume
                pos = np.stack([np.sort(np.random.default_rng([config.position_seed, unit_start + j, step, b_id]).choice(t, k_pos, replace=False)) for j in range(b)])
                rows = np.take_along_axis(acts, pos[:, :, None], axis=1).reshape(-1, d)
            pj = np.array([pairs[unit_start + j] for j in range(b)])
            k = pos.shape[1]
            prov = {
                "prompt": np.repeat(pj[:, 0].astype(PROVENANCE["prompt"]), k),
                "seed": np.repeat(pj[:, 1].astype(PROVENANCE["seed"]), k),
                "step": np.full(b * k, step, PROVENANCE["step"]),
                "timestep": np.full(b * k, timestep, PROVENANCE["timestep"]),
                "branch": np.full(b * k, b_id, PROVENANCE["branch"]),
                "position": pos.reshape(-1).astype(PROVENANCE["position"]),
            }
            writer.append(hp, rows, prov)

        from tqdm.auto import tqdm

        sampler = SamplerConfig(steps=config.steps, cfg=config.cfg, batch_size=config.batch_size)
        todo = my_units[done:]
        with Capture(pipe, [h.path for h in hps], sink, branch=config.branch, steps=kept_steps, capture=config.capture) as cap:
            for u in tqdm(todo, desc=f"caching {out.name}", unit="batch", disable=not progress, initial=done, total=len(my_units)):
                unit_start = u * config.batch_size
                unit = pairs[unit_start : unit_start + config.batch_size]
                images = sample(pipe, [table[pi]["prompt"] for pi, _ in unit], [s for _, s in unit], sampler, on_step=cap.on_step)
                writer.end_unit()
                if on_images is not None:
                    on_images(u, images)
        writer.commit()
    finally:
        writer.close()
    return out.parent if world > 1 else out


# ---------------------------------------------------------------- CLI


def _cmd_cache(args) -> None:
    from .generate import parse_seeds, read_prompts
    from .pipelines import load_pipeline

    if args.minicanvas:
        from .minicanvas.world import all_prompts

        prompts, source = all_prompts(), "minicanvas"
    else:
        prompts, source = read_prompts(args.prompts), str(args.prompts)
    hookpoints = tuple(h.strip() for h in args.hookpoints.split(",") if h.strip())
    config = CacheConfig(
        model=args.model,
        hookpoints=hookpoints,
        prompts=source,
        seeds=tuple(parse_seeds(args.seeds)),
        steps=args.steps,
        cfg=args.cfg,
        batch_size=args.batch_size,
        branch=args.branch,
        capture=args.capture,
        timesteps=args.timesteps,
        positions=args.positions,
        position_seed=args.position_seed,
    )
    check_config(config)
    rank, world = _dist()
    if world == 1 and Path(args.out).exists() and not args.resume:  # before the slow model load (shards check their own file)
        raise UserError(f"{args.out!r} already exists; pass --resume to continue it, or choose another --out")
    pipe = load_pipeline(args.model)
    path = cache_activations(pipe, prompts, args.out, config, resume=args.resume, progress=not args.quiet, commit_mb=args.commit_mb)
    if world > 1:  # the other ranks may still be writing: report this rank's shard only
        print(f"rank {rank}/{world} done: its shard of {path} is complete")
        return
    info = open_store(path)
    rows = ", ".join(f"{hp}: {n} rows x {info.widths[hp]}" for hp, n in info.rows.items())
    print(f"wrote {path} ({info.units_done}/{info.units_total} batches; {rows})")


def register_cli(sub) -> None:
    """Add `cache`."""
    from .cli import command_help

    from .generate import add_sampler_args

    p = sub.add_parser("cache", help=command_help("cache"))
    p.add_argument("--hookpoints", required=True, help="comma-separated module paths, e.g. up_blocks.1.attentions.1 (see `saeuron hookpoints`)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompts", help="a file with one prompt per line (no concept labels)")
    g.add_argument("--minicanvas", action="store_true", help="every minicanvas style x object prompt, with concept labels")
    p.add_argument("--seeds", default="0", help="seeds: 0,1,2 or 0-7")
    p.add_argument("--out", required=True, help="the store to write, e.g. activations/NAME.h5")
    add_sampler_args(p)
    p.add_argument("--branch", default="cond", choices=BRANCH_CHOICES, help="CFG half to store (default cond)")
    p.add_argument("--capture", default="output", choices=CAPTURE_CHOICES, help="block output, or residual = output - input")
    p.add_argument("--timesteps", default="all", help="steps to keep: all, every:K or step indices 0,10,20")
    p.add_argument("--positions", default="all", help="spatial positions to keep: all or random:K per image and step")
    p.add_argument("--position-seed", type=int, default=0, help="seed of the random:K position choice (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same options")
    p.add_argument("--commit-mb", type=float, default=COMMIT_MB, help=f"commit finished batches to disk in writes of about this many MiB, or once a minute (default {COMMIT_MB}; 0 = after every batch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cache)

