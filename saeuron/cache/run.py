"""`saeuron cache`: sample prompts x seeds through the hooks and append the activations to a store, resumably."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..concept_set import ConceptSet
from ..errors import UserError
from ..hooks import BRANCH_CHOICES, CAPTURE_CHOICES, Capture, get_hookpoint
from ..pipelines import CFG_BRANCHES, SamplerConfig, check_prompts, default_guidance, sample
from .store import FORMAT, FORMAT_VERSION, MANIFEST, PROVENANCE, CacheConfig, check_config, open_store, parse_positions, parse_timesteps, prompt_table
from .writer import COMMIT_MB, Writer, prepare_store


def _dist() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate launch environment variables."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise UserError(f"bad RANK/WORLD_SIZE environment ({os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}); they must be integers") from None



def cache_activations(
    pipe,
    prompts: ConceptSet | Sequence[str | dict],
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
    check_prompts(pipe, table.prompts)
    hps = [get_hookpoint(pipe, h) for h in config.hookpoints]
    config = CacheConfig(**{**asdict(config), "hookpoints": tuple(h.path for h in hps), "seeds": tuple(int(s) for s in config.seeds),
                            "cfg": float(config.cfg if config.cfg is not None else default_guidance(pipe))})
    kept_steps = parse_timesteps(config.timesteps, config.steps)
    k_pos = parse_positions(config.positions)
    too_many = [h.path for h in hps if k_pos is not None and k_pos > h.tokens]
    if too_many:
        raise UserError(f"--positions random:{k_pos} asks for more positions than {', '.join(too_many)} has tokens ({min(h.tokens for h in hps)})")
    pairs = [(pi, s) for pi in range(len(table.rows)) for s in config.seeds]
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
    done = prepare_store(out, config_json, table, {h.path: h.width for h in hps}, rows_per_call, resume, len(my_units))
    if done >= len(my_units):
        return out.parent if world > 1 else out

    writer = Writer(out, commit_bytes=int(commit_mb * 2**20))
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
                images = sample(pipe, [table.rows[pi]["prompt"] for pi, _ in unit], [s for _, s in unit], sampler, on_step=cap.on_step)
                writer.end_unit()
                if on_images is not None:
                    on_images(u, images)
        writer.commit()
    finally:
        writer.close()
    return out.parent if world > 1 else out


# ---------------------------------------------------------------- CLI


def _cmd_cache(args) -> None:
    from ..cli_args import check_output, concept_set_from_args, device_from_args, parse_seeds
    from ..pipelines import load_pipeline

    table = concept_set_from_args(args)
    device, dtype = device_from_args(args)
    hookpoints = tuple(h.strip() for h in args.hookpoints.split(",") if h.strip())
    config = CacheConfig(
        model=args.model,
        hookpoints=hookpoints,
        prompts=table.name,
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
    check_output(args.out, "activation store", folder=world > 1, may_replace=lambda _: args.resume)
    pipe = load_pipeline(args.model, dtype, device)
    path = cache_activations(pipe, table, args.out, config, resume=args.resume, progress=not args.quiet, commit_mb=args.commit_mb)
    if world > 1:  # the other ranks may still be writing: report this rank's shard only
        print(f"rank {rank}/{world} done: its shard of {path} is complete")
        return
    info = open_store(path)
    rows = ", ".join(f"{hp}: {n} rows x {info.widths[hp]}" for hp, n in info.rows.items())
    print(f"wrote {path} ({info.units_done}/{info.units_total} batches; {rows})")


def register_cli(sub) -> None:
    """Add `cache`."""
    from ..cli import command_help

    from ..cli_args import PROMPTS_HELP, SEED, add_sampler_args, bounded

    p = sub.add_parser("cache", help=command_help("cache"))
    p.add_argument("--hookpoints", required=True, help="comma-separated module paths, e.g. up_blocks.1.attentions.1 (see `saeuron hookpoints`)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompts", help=PROMPTS_HELP)
    g.add_argument("--minicanvas", action="store_true", help="the built-in labelled prompt set: every minicanvas style x object prompt")
    p.add_argument("--seeds", default="0", help="seeds: 0,1,2 or 0-7")
    p.add_argument("--out", required=True, help="the store to write, e.g. activations/NAME.h5")
    add_sampler_args(p)
    p.add_argument("--branch", default="cond", choices=BRANCH_CHOICES, help="CFG half to store (default cond)")
    p.add_argument("--capture", default="output", choices=CAPTURE_CHOICES, help="block output, or residual = output - input")
    p.add_argument("--timesteps", default="all", help="steps to keep: all, every:K or step indices 0,10,20")
    p.add_argument("--positions", default="all", help="spatial positions to keep: all or random:K per image and step")
    p.add_argument("--position-seed", type=SEED, default=0, help="seed of the random:K position choice (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same options")
    p.add_argument("--commit-mb", type=bounded(float, 0, 1 << 20), default=COMMIT_MB, help=f"commit finished batches to disk in writes of about this many MiB, or once a minute (default {COMMIT_MB}; 0 = after every batch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cache)
