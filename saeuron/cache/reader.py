"""Reading committed rows of a store: provenance, row ranges, filtered counts and shuffled batches (bounded memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..pipelines import CFG_BRANCHES
from .store import PROVENANCE, PROVENANCE_CHUNK, StoreInfo, check_hookpoint, committed_rows, dataset, open_read, open_store




def row_provenance(path: str | Path, hookpoint: str, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Provenance columns (prompt, seed, step, timestep, branch, position) of committed rows, in store order."""
    info = open_store(path)
    check_hookpoint(info, hookpoint)
    cols: dict[str, list] = {k: [] for k in PROVENANCE}
    for shard in info.shards:
        with open_read(Path(shard)) as f:
            n = committed_rows(f)[1][hookpoint]
            for k in PROVENANCE:
                cols[k].append(dataset(f, f"rows/{hookpoint}/{k}")[:n])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    return out if rows is None else {k: v[rows] for k, v in out.items()}


def read_rows(path: str | Path, hookpoint: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Committed rows start:stop of a hookpoint as float32 (rows, width), in store order."""
    info = open_store(path)
    check_hookpoint(info, hookpoint)
    stop = info.rows[hookpoint] if stop is None else min(stop, info.rows[hookpoint])
    parts, offset = [], 0
    for shard in info.shards:
        with open_read(Path(shard)) as f:
            n = committed_rows(f)[1][hookpoint]
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                parts.append(dataset(f, f"acts/{hookpoint}")[lo:hi])
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
        if kind not in info.concept_set.kinds:
            raise UserError(f"unknown concept kind {kind!r}; {info.path!r} has the kinds {', '.join(info.concept_set.kinds) or '(none: unlabelled prompts)'}")
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
        with open_read(Path(shard)) as f:
            n = committed_rows(f)[1][hookpoint]
            cols = {k: dataset(f, f"rows/{hookpoint}/{k}") for k in columns}
            for lo in range(0, n, block_rows):
                yield {k: d[lo : min(lo + block_rows, n)] for k, d in cols.items()}


def prompts_with_rows(path: str | Path, hookpoint: str) -> np.ndarray:
    """The sorted distinct prompt indices of a hookpoint's committed rows."""
    info = open_store(path)
    check_hookpoint(info, hookpoint)
    found = np.zeros(0, np.int64)
    for p in _provenance_blocks(info, hookpoint, ("prompt",)):
        found = np.union1d(found, p["prompt"])
    return found


def count_rows(path: str | Path, hookpoint: str, prompts: Sequence[int] | None = None, timesteps: Sequence[int] | None = None, **filters) -> int:
    """Committed rows of a hookpoint that pass the filters of `iter_batches` (reads provenance only)."""
    info = open_store(path)
    check_hookpoint(info, hookpoint)
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
    check_hookpoint(info, hookpoint)
    keep = _row_filter(info, timesteps, steps, branch, concept, prompts)
    rng = np.random.default_rng(seed)
    fill = max(buffer_rows, batch_size)
    files = [open_read(Path(s)) for s in info.shards]
    try:
        blocks = []
        for fi, f in enumerate(files):
            n = committed_rows(f)[1][hookpoint]
            chunk = dataset(f, f"acts/{hookpoint}").chunks[0]
            for k in PROVENANCE:
                dataset(f, f"rows/{hookpoint}/{k}")
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
