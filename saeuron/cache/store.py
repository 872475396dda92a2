"""The store's format, its config and spec parsing, and opening a store (file or sharded folder) for reading."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..concept_set import ConceptSet
from ..errors import UserError
from ..hooks import BRANCH_CHOICES, CAPTURE_CHOICES
from ..pipelines import MINICANVAS


FORMAT = "saeuron-activations"
FORMAT_VERSION = 2  # 2: a label column per concept kind (prompts.attrs['kinds']); 1: style and object only
READABLE_VERSIONS = (1, 2)
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
    if config.cfg is not None and not (math.isfinite(config.cfg) and config.cfg >= 0):
        raise UserError(f"the guidance scale must be a finite number >= 0, got {config.cfg}")
    if config.batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {config.batch_size}")
    if not config.seeds:
        raise UserError("no seeds given")
    if not config.hookpoints:
        raise UserError("no hookpoints given")
    parse_timesteps(config.timesteps, config.steps)
    parse_positions(config.positions)


def prompt_table(prompts: ConceptSet | Sequence[str | dict]) -> ConceptSet:
    """The labelled prompt set of a run: a ConceptSet as is; plain strings are unlabelled prompts, dicts carry a label per kind."""
    return prompts if isinstance(prompts, ConceptSet) else ConceptSet.from_rows(prompts, "the prompt list")


# ---------------------------------------------------------------- opening


def open_read(path: Path) -> h5py.File:
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
        if version not in READABLE_VERSIONS:
            raise UserError(f"{str(path)!r} has store format version {version}; this saeuron reads versions {', '.join(map(str, READABLE_VERSIONS))}")
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


def committed_rows(f: h5py.File) -> tuple[int, dict[str, int]]:
    """Units done and committed rows per hookpoint (rows past these belong to an unfinished unit)."""
    prog = dataset(f, "progress")
    names = json.loads(f.attrs["config"])["hookpoints"]
    n = prog.shape[0]
    last = prog[n - 1] if n else np.zeros(len(names), np.int64)
    return n, {hp: int(r) for hp, r in zip(names, last)}


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """A dataset, refreshed so that a SWMR reader sees what the writer has flushed."""
    d = f[name]
    if f.swmr_mode:
        d.refresh()
    return d


def read_prompt_table(f: h5py.File) -> ConceptSet:
    """The store's labelled prompts (version 1 stores have the kinds style and object)."""
    g = f["prompts"]
    kinds = json.loads(g.attrs["kinds"]) if "kinds" in g.attrs else ["style", "object"]
    cols = {k: [x.decode() if isinstance(x, bytes) else str(x) for x in g[k][()]] for k in ("text", *kinds)}
    rows = [{"prompt": t, **{k: cols[k][i] for k in kinds}} for i, t in enumerate(cols["text"])]
    return ConceptSet(f.filename, tuple(kinds), tuple(rows))


def write_prompt_table(f: h5py.File, table: ConceptSet) -> None:
    """The prompts group: the text and one label column per kind ('' when unlabelled)."""
    g = f.create_group("prompts")
    g.attrs["kinds"] = json.dumps(list(table.kinds))
    g.attrs["source"] = table.name
    g.create_dataset("text", data=table.prompts, dtype=h5py.string_dtype())
    for kind in table.kinds:
        g.create_dataset(kind, data=[r[kind] for r in table.rows], dtype=h5py.string_dtype())


@dataclass
class StoreInfo:
    """What a store holds: its config, prompts, hookpoints with widths and committed row counts."""

    path: str
    format_version: int
    config: dict
    concept_set: ConceptSet  # the labelled prompts; row i is prompt index i of the provenance
    widths: dict[str, int]
    rows: dict[str, int]
    units_done: int
    units_total: int
    shards: list[str] = field(default_factory=list)

    @property
    def hookpoints(self) -> list[str]:
        return list(self.widths)

    @property
    def prompts(self) -> list[dict]:
        """Row dicts {'prompt': text, kind: value} of every prompt."""
        return list(self.concept_set.rows)

    @property
    def complete(self) -> bool:
        return self.units_done >= self.units_total


def units_total(config: dict, n_prompts: int) -> int:
    return math.ceil(n_prompts * len(config["seeds"]) / config["batch_size"])


def open_store(path: str | Path) -> StoreInfo:
    """Metadata of a store file or sharded folder (no activations are read)."""
    path = Path(path)
    shards = _shard_paths(path)
    widths: dict[str, int] = {}
    rows: dict[str, int] = {}
    units = 0
    config = table = None
    for shard in shards:
        with open_read(shard) as f:
            cfg = json.loads(f.attrs["config"])
            cfg.pop("rank", None), cfg.pop("world_size", None)
            if config is None:
                config, table = cfg, read_prompt_table(f)
            elif cfg != config:
                raise UserError(f"shard {str(shard)!r} was written with a different config than {str(shards[0])!r}")
            done, committed = committed_rows(f)
            units += done
            for hp in cfg["hookpoints"]:
                widths[hp] = int(f["acts"][hp].shape[1])
                rows[hp] = rows.get(hp, 0) + committed[hp]
    table = ConceptSet(str(path), table.kinds, table.rows)
    return StoreInfo(str(path), FORMAT_VERSION, config, table, widths, rows, units, units_total(config, len(table.rows)), [str(s) for s in shards])


def check_hookpoint(info: StoreInfo, hookpoint: str) -> None:
    if hookpoint not in info.widths:
        raise UserError(f"hookpoint {hookpoint!r} is not in {info.path!r}; it holds {', '.join(info.hookpoints)}")
