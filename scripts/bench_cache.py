"""Benchmark activation caching: caching time / plain generation time, store write speed vs a plain file write,
and peak memory against the number of prompts.

    OMP_NUM_THREADS=1 python scripts/bench_cache.py [--model minicanvas] [--prompts 8] [--steps 10]
        [--memory-prompts 20,80 --commit-mb 8]

Prints the ratios measured in this run (same prompts, seeds, steps; 2 hookpoints). Peak memory
(max RSS) is measured in a fresh process per prompt count, caching with the given commit size.
Without shipped minicanvas weights it falls back to a random-weight minicanvas (same compute).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saeuron import cache
from saeuron.cache import writer
from saeuron.errors import UserError
from saeuron.hooks import get_hookpoint
from saeuron.minicanvas.world import all_prompts
from saeuron.pipelines import SamplerConfig, load_pipeline, sample

HOOKPOINTS = ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2")


def _pipeline(name: str):
    try:
        return load_pipeline(name), name
    except UserError:
        if name != "minicanvas":
            raise
        from saeuron.minicanvas.model import build_scheduler, build_text_encoder, build_tokenizer, build_unet
        from saeuron.pipelines import MiniCanvasPipeline

        torch.manual_seed(0)
        tok = build_tokenizer()
        pipe = MiniCanvasPipeline(unet=build_unet(), scheduler=build_scheduler(), text_encoder=build_text_encoder(len(tok.get_vocab())), tokenizer=tok)
        pipe.set_progress_bar_config(disable=True)
        return pipe, "minicanvas (random weights: shipped weights missing)"


def _peak_rss_run(model: str, n_prompts: int, steps: int, batch_size: int, commit_mb: float) -> None:
    """Cache `n_prompts` minicanvas prompts into a temporary store; print this process's peak RSS (MiB)."""
    pipe, _ = _pipeline(model)
    prompts = (all_prompts() * (n_prompts // len(all_prompts()) + 1))[:n_prompts]
    config = cache.CacheConfig(model=model, hookpoints=HOOKPOINTS, seeds=(0,), steps=steps, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = cache.cache_activations(pipe, prompts, Path(tmp) / "mem.h5", config, progress=False, commit_mb=commit_mb)
        stored = sum(cache.open_store(out).rows.values())
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": stored}))


def _peak_rss(args, n_prompts: int) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--commit-mb", str(args.commit_mb), "--rss-run", str(n_prompts)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tile_to(rows: dict, prov: dict, mib: float) -> tuple[dict, dict]:
    """Repeat the cached rows (and their provenance) until the payload is at least `mib` MiB."""
    n_bytes = sum(rows[h].nbytes + sum(v.nbytes for v in prov[h].values()) for h in rows)
    reps = max(1, int(np.ceil(mib * 2**20 / n_bytes)))
    return {h: np.concatenate([a] * reps) for h, a in rows.items()}, {h: {k: np.concatenate([v] * reps) for k, v in p.items()} for h, p in prov.items()}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _time_store_write(path: Path, info, rows: dict, prov: dict, rows_per_call: int, calls_per_unit: int, commit_mb: float) -> float:
    """Seconds to write the rows through the store writer as caching does (one append per hook call,
    units of `calls_per_unit` calls), until durable on disk."""
    writer.Writer.create(path, json.dumps(info.config, sort_keys=True), info.concept_set, info.widths, {h: rows_per_call for h in HOOKPOINTS})
    t = time.perf_counter()
    w = writer.Writer(path, commit_bytes=int(commit_mb * 2**20))
    for call, start in enumerate(range(0, len(rows[HOOKPOINTS[0]]), rows_per_call)):
        for h in HOOKPOINTS:
            w.append(h, rows[h][start : start + rows_per_call], {k: v[start : start + rows_per_call] for k, v in prov[h].items()})
        if (call + 1) % calls_per_unit == 0:
            w.end_unit()
    w.commit()
    w.close()
    _fsync_path(path)
    return time.perf_counter() - t


def _time_plain_write(path: Path, rows: dict, prov: dict) -> float:
    """Seconds to write the same bytes with one sequential binary file write, until durable on disk."""
    t = time.perf_counter()
    with open(path, "wb") as f:
        for h in HOOKPOINTS:
            f.write(memoryview(rows[h]).cast("B"))
            for v in prov[h].values():
                f.write(memoryview(v).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minicanvas")
    ap.add_argument("--prompts", type=int, default=8, help="number of minicanvas prompts (one seed each)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--memory-prompts", default="", help="comma-separated prompt counts for the peak-memory runs, e.g. 20,80")
    ap.add_argument("--write-mib", type=float, default=256, help="payload of the write-speed test: the cached rows repeated to this size")
    ap.add_argument("--commit-mb", type=float, default=cache.COMMIT_MB, help="commit size of the store writer")
    ap.add_argument("--rss-run", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_run:
        _peak_rss_run(args.model, args.rss_run, args.steps, args.batch_size, args.commit_mb)
        return

    pipe, label = _pipeline(args.model)
    prompts = all_prompts()[: args.prompts]
    seeds = [0] * len(prompts)
    sampler = SamplerConfig(steps=args.steps, batch_size=args.batch_size)
    config = cache.CacheConfig(model=args.model, hookpoints=HOOKPOINTS, seeds=(0,), steps=args.steps, batch_size=args.batch_size)
    sample(pipe, [p["prompt"] for p in prompts[:1]], [0], SamplerConfig(steps=1))  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        gen, cached = [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            sample(pipe, [p["prompt"] for p in prompts], seeds, sampler)
            gen.append(time.perf_counter() - t)
            out = Path(tmp) / f"bench{r}.h5"
            t = time.perf_counter()
            cache.cache_activations(pipe, prompts, out, config, progress=False, commit_mb=args.commit_mb)
            cached.append(time.perf_counter() - t)
        info = cache.open_store(out)

        # store write speed alone: the same rows through the store writer vs one plain sequential file write
        rows = {h: cache.read_rows(out, h).numpy().astype(np.float16) for h in HOOKPOINTS}
        prov = {h: cache.row_provenance(out, h) for h in HOOKPOINTS}
        rows_per_call = args.batch_size * get_hookpoint(pipe, HOOKPOINTS[0]).tokens  # one image batch, one step
        rows, prov = _tile_to(rows, prov, args.write_mib)
        store_t, plain_t = [], []
        for r in range(args.repeats):
            store_t.append(_time_store_write(Path(tmp) / f"write{r}.h5", info, rows, prov, rows_per_call, args.steps, args.commit_mb))
            plain_t.append(_time_plain_write(Path(tmp) / f"plain{r}.bin", rows, prov))
            os.remove(Path(tmp) / f"write{r}.h5")
            os.remove(Path(tmp) / f"plain{r}.bin")
        # the payload both writers write: activations plus per-row provenance
        n_bytes = sum(rows[h].nbytes + sum(v.nbytes for v in prov[h].values()) for h in HOOKPOINTS)

    g, c, s, p = min(gen), min(cached), min(store_t), min(plain_t)
    mb = n_bytes / 2**20
    print(f"model: {label}; {len(prompts)} prompts x 1 seed, {args.steps} steps, hookpoints {', '.join(HOOKPOINTS)}")
    print(f"plain generation: {g:.2f} s; generation + caching: {c:.2f} s; ratio caching/generation = {c / g:.2f}")
    print(f"activations + provenance: {mb:.1f} MiB; store write {mb / s:.1f} MiB/s vs plain sequential write {mb / p:.1f} MiB/s; ratio = {(mb / s) / (mb / p):.2f}")
    for n in [int(x) for x in args.memory_prompts.split(",") if x.strip()]:
        r = _peak_rss(args, n)
        print(f"peak memory caching {n} prompts ({r['rows']} rows, commit {args.commit_mb:g} MiB): {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
