"""Sequential unlearning: six styles erased one after another, per method. Writes benchmarks/SEQUENTIAL.md and
benchmarks/sequential/<method>.png.

    python scripts/bench_sequential.py [--methods saeuron-paper,uce,esd-x,esd-u,ca,sa,spm,unguide] [--eval-seeds 300-304] [--device cuda]

Weight methods chain their edits: step k is `saeuron unlearn --after` step k-1's folder, each at the method's default
setting, seed 0. SAeUron merges feature sets: one folder erases every style so far, at the paper's style setting (1
feature a step, multiplier -1, the SAE of scripts/bench_attacks.py). After each step the classifier judges the
110-prompt grid on the evaluation seeds. It reports UA on every style erased so far (their mean and the first
style's, to show rebound), IRA on the styles not yet erased, and CRA on objects. Each step resumes where it stopped.
SPM composes: each step's adapter is fitted on the base model and applied beside the earlier ones, each with its own
facilitated transport (the paper's multi-concept use). UnGuide composes too: one LoRA per style, fitted on the base
model, all under one UnGuidance gate (a prompt is flagged when any LoRA's stability score flags it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from bench_common import parse_methods, saeuron_paper_style  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.concept_set import ConceptSet  # noqa: E402
from saeuron.evaluate import full_answer_set, generate_answer_set, run_unlearned_evaluation  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler  # noqa: E402
from saeuron.unlearn import unlearn  # noqa: E402

STYLES = ["style:neon", "style:ocean", "style:lava", "style:candy", "style:noir", "style:desert"]
METHODS = ["saeuron-paper", "uce", "esd-x", "esd-u", "ca", "sa", "spm", "unguide"]


def step_folder(pipe, run: Path, method: str, k: int) -> Path:
    """The unlearned folder after erasing STYLES[:k + 1] (made once; a chain's earlier steps first)."""
    folder = run / method / f"step{k + 1}"
    if (folder / "unlearn.json").exists():
        return folder
    print(f"[{method}] step {k + 1}: erasing {STYLES[k]}", flush=True)
    if method == "saeuron-paper":
        sae, settings = saeuron_paper_style(pipe, run)
        unlearn("saeuron", STYLES[: k + 1], folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0, settings, sae=sae, log=lambda s: None)
    else:
        after = step_folder(pipe, run, method, k - 1) if k else None
        unlearn(method, [STYLES[k]], folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0, [], log=lambda s: None, after=after)
    return folder


def _draw_panel(d, left: float, width: float, h: int, pad: int, series: list[tuple[list[float], str]]) -> None:
    """A 0-100 panel against the step (1 .. len(STYLES)): frame, ticks, and one line of dots per (values, colour)."""
    x = lambda i: left + pad + i * (width - 2 * pad) / max(1, len(STYLES) - 1)  # noqa: E731
    y = lambda v: h - pad - v * (h - 2 * pad) / 100  # noqa: E731
    d.rectangle([left + pad, pad, left + width - pad, h - pad], outline="black")
    for v in (0, 50, 100):
        d.text((left + 4, y(v) - 6), str(v), fill="black")
    for i in range(len(STYLES)):
        d.text((x(i) - 3, h - pad + 4), str(i + 1), fill="black")
    for values, colour in series:
        pts = [(x(i), y(v)) for i, v in enumerate(values)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for px, py in pts:
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)


def plot_png(rows: list[dict], method: str, path: Path) -> None:
    """UA (styles erased so far), IRA and CRA against the step, as a small line chart."""
    from PIL import Image, ImageDraw

    w, h, pad = 360, 240, 36
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    keys = (("UA", "red"), ("IRA", "blue"), ("CRA", "green"))
    _draw_panel(d, 0, w, h, pad, [([r[key] for r in rows], colour) for key, colour in keys])
    for j, (key, colour) in enumerate(keys):
        d.text((pad + 70 * j, 8), key, fill=colour)
    d.text((w - pad - 110, 8), f"{method}, step", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, lambda tmp: img.save(tmp, format="PNG"))


def plot_all(records: list[dict], path: Path) -> None:
    """UA, IRA and CRA against the step for every method, one panel each, one colour per method."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    colours = ["black", "red", "blue", "green", "orange", "purple", "brown", "magenta", "teal", "gray"]
    pw, h, pad, legend = 300, 260, 34, 130
    img = Image.new("RGB", (3 * pw + legend, h), "white")
    d = ImageDraw.Draw(img)
    for panel, key in enumerate(("UA", "IRA", "CRA")):
        _draw_panel(d, panel * pw, pw, h, pad, [([row[key] for row in r["rows"]], c) for r, c in zip(records, colours)])
        d.text((panel * pw + pad, 10), f"{key} after step k", fill="black", font=font)
    for j, (r, colour) in enumerate(zip(records, colours)):
        d.text((3 * pw + 8, pad + 18 * j), r["method"], fill=colour, font=font)
    _replace(path, lambda tmp: img.save(tmp, format="PNG"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "activations" / "sequential")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--eval-seeds", default="300-304")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SEQUENTIAL.md")
    p.add_argument("--png-dir", type=Path, default=ROOT / "benchmarks" / "sequential")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    p.add_argument("--table-only", action="store_true",
                   help="erase and judge nothing: record each method's steps already judged in --run, up to its first missing step "
                        "(after a run was stopped), as by the command without this flag")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods, METHODS)
    eval_seeds = parse_seeds(args.eval_seeds)
    pipe = load_pipeline(device=args.device)
    sampler = resolve_sampler(pipe, SamplerConfig())
    base_path = args.run / "base_images.pt"
    if not base_path.exists() and not args.table_only:
        args.run.mkdir(parents=True, exist_ok=True)
        torch.save(generate_answer_set(pipe, full_answer_set(eval_seeds), sampler), base_path.with_suffix(".partial"))
        base_path.with_suffix(".partial").rename(base_path)  # an interrupted run leaves no half-written file behind
    base_images = None if args.table_only else torch.load(base_path)
    cmd = ("python scripts/bench_sequential.py " + " ".join(a for a in sys.argv[1:] if a != "--table-only")).strip()
    machine = f"{pipe.device.type}, {args.threads} thread{'s' if args.threads > 1 else ''}, torch {torch.__version__}"
    for method in methods:
        rows = []
        for k in range(len(STYLES)):
            out = args.run / method / f"step{k + 1}.json"
            if not out.exists():
                if args.table_only:
                    break
                run_unlearned_evaluation(step_folder(pipe, args.run, method, k), eval_seeds, sampler, out, None, pipe, base_images=base_images)
            res = json.loads(out.read_text())["targets"]
            erased = STYLES[: k + 1]
            rows.append({"UA": float(np.mean([res[t]["UA"] for t in erased])), "UA_first": res[STYLES[0]]["UA"],
                         "IRA": res[STYLES[k]]["IRA"], "CRA": res[STYLES[k]]["CRA"]})
            print(f"[{method}] step {k + 1}: UA {rows[-1]['UA']:.1f} (first {rows[-1]['UA_first']:.0f}) IRA {rows[-1]['IRA']:.1f} "
                  f"CRA {rows[-1]['CRA']:.1f}", flush=True)
            # the row so far lands after every step, so a run stopped midway still leaves its measured steps in the table
            plot_png(rows, method, args.png_dir / f"{method}.png")
            record = {"method": method, "rows": rows, "command": cmd, "machine": machine, "date": time.strftime("%Y-%m-%d"),
                      "eval_seeds": f"{eval_seeds[0]}-{eval_seeds[-1]}"}
            write_atomic(args.png_dir / f"{method}.json", json.dumps(record, indent=1) + "\n")
            write_table(args.png_dir, args.out, eval_seeds)
    print(args.out.read_text())


def write_table(rows_dir: Path, out: Path, eval_seeds: list[int]) -> None:
    """SEQUENTIAL.md from every method's rows in rows_dir (<method>.json), each with the command and machine that ran it."""
    records = [json.loads((rows_dir / f"{m}.json").read_text()) for m in METHODS if (rows_dir / f"{m}.json").exists()]
    lines = ["# Sequential unlearning on minicanvas", "",
             f"Styles erased in this order: {', '.join(s.split(':')[1] for s in STYLES)}. After step k: UA = mean UA over "
             f"the k styles erased so far (first: UA of {STYLES[0]}, which shows rebound), IRA on the 10 - k styles left, "
             f"CRA on objects; evaluation seeds {eval_seeds[0]}-{eval_seeds[-1]}. Every method at its default setting, seed 0. "
             "Weight methods chain (`unlearn --after`); SAeUron merges feature sets; SPM composes its adapters (each fitted on "
             "the base model, each with its own facilitated transport, as the paper combines them); UnGuide composes its LoRAs under one gate (flagged when any LoRA flags the prompt). Plots: `benchmarks/sequential/all.png` (every method, one panel per metric) and `benchmarks/sequential/<method>.png` (UA red, IRA blue, CRA green); rows: "
             "`benchmarks/sequential/<method>.json`.", "",
             "| method | " + " | ".join(f"step {k + 1}: UA (first) / IRA / CRA" for k in range(len(STYLES))) + " |",
             "|---|" + "---|" * len(STYLES)]
    for r in records:
        cells = [f"{x['UA']:.0f} ({x['UA_first']:.0f}) / {x['IRA']:.0f} / {x['CRA']:.0f}" for x in r["rows"]]
        lines.append(f"| {r['method']} | " + " | ".join(cells + ["not run"] * (len(STYLES) - len(cells))) + " |")
    lines += ["", "Each row's command and machine:", ""]
    lines += [f"- {r['method']}: `{r['command']}`, {r['machine']} ({r['date']})" for r in records]
    write_atomic(out, "\n".join(lines) + "\n")
    plot_all(records, rows_dir / "all.png")


def write_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file (see `_replace`)."""
    _replace(path, lambda tmp: tmp.write_text(text))


def _replace(path: Path, write) -> None:
    """`write(tmp)` then move tmp onto path, so that runs of several methods side by side never read a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
