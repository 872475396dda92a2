"""Benchmark: SAE training tokens/s streaming from an HDF5 store vs from an in-memory tensor.

    OMP_NUM_THREADS=1 python scripts/bench_train.py [--width 320] [--rows 200000] [--steps 60]

Writes a temporary activation store through the `saeuron cache` writer (one unit per prompt),
then trains the same SAE for the same number of steps from each source and prints tokens/s
of each, the ratio, and the raw reader throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saeuron import cache
from saeuron.cache import writer
from saeuron.train import TrainConfig, tensor_batches, train

HOOK = "up_blocks.1.attentions.1"


def write_store(path: Path, rows: int, width: int, rows_per_prompt: int = 256) -> torch.Tensor:
    """Random low-rank-ish activations in the store layout; returns them as float32."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4 * width, width, generator=g) / width**0.5
    x = torch.empty(rows, width, dtype=torch.float16)
    for i in range(0, rows, 65536):  # sparse codes over an overcomplete basis, in blocks
        n = min(65536, rows - i)
        codes = torch.relu(torch.randn(n, 4 * width, generator=g) - 2.0)
        x[i:i + n] = (codes @ basis).half()
    n_prompts = -(-rows // rows_per_prompt)
    config = cache.CacheConfig(hookpoints=(HOOK,), prompts="bench", batch_size=1)
    writer.Writer.create(path, config.to_json(), cache.prompt_table([f"prompt {i}" for i in range(n_prompts)]), {HOOK: width})
    w = writer.Writer(path)
    for p, lo in enumerate(range(0, rows, rows_per_prompt)):  # one unit per prompt
        n = min(rows_per_prompt, rows - lo)
        prov = {k: np.zeros(n, dt) for k, dt in cache.PROVENANCE.items()}
        prov["prompt"][:], prov["branch"][:], prov["position"][:] = p, 1, np.arange(n)
        w.append(HOOK, x[lo:lo + n].numpy(), prov)
        w.end_unit()
    w.commit()
    w.close()
    return x.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--arch", default="batchtopk")
    args = ap.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.time()
        x = write_store(tmp / "cache.h5", args.rows, args.width)
        print(f"wrote {args.rows} x {args.width} float16 store in {time.time() - t:.1f} s")

        batches = cache.iter_batches(tmp / "cache.h5", HOOK, args.batch_size, epochs=None)
        t, n = time.time(), 0
        for _, batch in zip(range(args.steps), batches):
            n += len(batch)
        read_tps = n / (time.time() - t)
        batches.close()
        t, n = time.time(), 0
        for _, batch in zip(range(args.steps), tensor_batches(x, args.batch_size)):
            n += len(batch)
        mem_read_tps = n / (time.time() - t)

        common = dict(hookpoint=HOOK, arch=args.arch, expansion=args.expansion, batch_size=args.batch_size,
                      tokens=args.steps * args.batch_size, n_checkpoints=0, val_tokens=4096)
        from_store = train(TrainConfig(out=str(tmp / "store"), cache=str(tmp / "cache.h5"), **common))
        val = x[-4096:]
        from_memory = train(TrainConfig(out=str(tmp / "memory"), **common), data=tensor_batches(x[:-4096], args.batch_size), val_acts=val)

    print(f"\nSAE {args.arch}, width {args.width} x{args.expansion}, batch {args.batch_size}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"reader only:   HDF5 {read_tps:12,.0f} tokens/s   memory {mem_read_tps:12,.0f} tokens/s")
    print(f"training:      HDF5 {from_store['tokens_per_s']:12,.0f} tokens/s   memory {from_memory['tokens_per_s']:12,.0f} tokens/s")
    print(f"ratio HDF5/memory (training): {from_store['tokens_per_s'] / from_memory['tokens_per_s']:.2f}")
    print(f"reader headroom (HDF5 reader tokens/s / memory training tokens/s): {read_tps / from_memory['tokens_per_s']:.1f}x")


if __name__ == "__main__":
    main()
