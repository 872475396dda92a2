"""Every method under attack: writes benchmarks/ATTACKS.md (UA before and after each white-box attack, per method).

    python scripts/bench_attacks.py [--run activations/attacks] [--methods uce,esd-x,...] [--targets style:neon]

For each method and target, `saeuron unlearn` (the method's default setting, seed 0; SAeUron as `saeuron-paper`: the
paper's style setting, 1 feature a step, multiplier -1; objects tuned over the paper's grid on seeds 100-101, as
bench_methods tunes them; SAEs built as bench_methods builds them) writes a folder, and
`saeuron attack` runs `unlearndiffatk` and `inversion` at their default budgets (300 Adam steps, lr 0.01) with concept
images from seeds 400-403, judged on evaluation seeds 300-304. Every step resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from bench_common import attack_cells, parse_methods, saeuron_paper_style  # noqa: E402
from bench_methods import sae_settings  # noqa: E402
from saeuron.attack import ATTACKS, AttackConfig, run_attack  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.concept_set import Concept, ConceptSet  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler  # noqa: E402
from saeuron.unlearn import unlearn  # noqa: E402

METHODS = ["saeuron-paper", "uce", "esd-x", "esd-u", "ca", "spm", "unguide", "sa"]
THREAT_MODEL = (
    "Threat model. Both attacks are white-box: the attacker has the unlearned model's gradients (through its edited "
    "weights, its adapter, or SAeUron's ablation hook, which stays in the graph as in the paper's own evaluation) and "
    "writes the text embeddings, but keeps the method in place. `unlearndiffatk` (soft UnlearnDiffAtk) keeps the prompt's "
    "concept words and controls its other positions (template words and the free padding slot); `inversion` (concept "
    "inversion) replaces the concept's word by one learned embedding. Neither is a prompt-only (black-box) attack, and "
    "neither assumes weights in hand: anyone holding SAeUron's weights can drop its hook, and anyone holding a fine-tuned "
    "model can fine-tune the concept back; no column measures that.")


def folder_for(pipe, run: Path, method: str, target: str) -> Path:
    """The method's unlearned folder for the target (made once)."""
    folder = run / "unlearned" / method / target.replace(":", "-")
    if (folder / "unlearn.json").exists():
        return folder
    print(f"[{method}] unlearning {target}", flush=True)
    if method == "saeuron-paper":
        sae, settings = saeuron_paper_style(pipe, run)  # builds the run's SAEs (styles and objects)
        if Concept.parse(target).kind != "style":  # objects: tuned over the paper's grid on seeds 100-101, as bench_methods
            sae, settings = sae_settings(pipe, run, "saeuron-paper", target, [100, 101], resolve_sampler(pipe, SamplerConfig()))
        unlearn("saeuron", [target], folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0, settings, sae=sae, log=lambda s: None)
    else:
        unlearn(method, [target], folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0, [], log=lambda s: None)
    return folder


def write_markdown(out: Path, table: dict, targets: list[str], eval_seeds: list[int]) -> None:
    cmd = "python scripts/bench_attacks.py " + " ".join(sys.argv[1:])
    lines = ["# Unlearning under attack on minicanvas", "",
             f"Written by `{cmd.strip()}` ({time.strftime('%Y-%m-%d')}), CPU (torch threads per row), torch {torch.__version__}. Each method at its default setting (seed 0) on the row's target (this command: {', '.join(targets)}; other rows: earlier runs of the same script, kept in the run's table); UA (%) on evaluation seeds "
             f"{eval_seeds[0]}-{eval_seeds[-1]} without the attack and after it; concept images from the base model on seeds "
             "400-403; 300 Adam steps at lr 0.01 per attack.", "", THREAT_MODEL, "",
             "| method | target | UA, no attack | UA after unlearndiffatk (white-box, soft prompt) | UA after inversion (white-box, new token) | attack time (s) | threads |",
             "|---|---|---|---|---|---|---|"]
    for method, rows in table.items():
        for target, r in rows.items():
            before, after, secs, threads = attack_cells(r, ATTACKS)
            lines.append(f"| {method} | {target} | {before} | " + " | ".join(after) + f" | {secs:.0f} | {threads} |")
    lines += ["", "Per-prompt UA and the learned embeddings: `RUN/attacks/<method>/<target>/<attack>/`. The table's data: "
              f"`{out.with_suffix('.json').name}` beside this file (METHODS.md shows it too)."]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(table, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "activations" / "attacks")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default="style:neon")
    p.add_argument("--eval-seeds", default="300-304")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ATTACKS.md")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods, METHODS)
    targets = [t for t in args.targets.split(",") if t]
    eval_seeds = parse_seeds(args.eval_seeds)
    pipe = load_pipeline(device=args.device)
    sampler = resolve_sampler(pipe, SamplerConfig())
    table_path = args.run / "table.json"
    # the run's table, else the committed one: rows from earlier runs stay in ATTACKS.md
    known = table_path if table_path.exists() else args.out.with_suffix(".json")
    table = json.loads(known.read_text()) if known.exists() else {}
    for method in methods:
        for target in targets:
            row = table.setdefault(method, {}).setdefault(target, {})
            folder = folder_for(pipe, args.run, method, target)
            for attack in ATTACKS:
                if attack in row:
                    continue
                out = args.run / "attacks" / method / target.replace(":", "-") / attack
                res = run_attack(folder, [target], eval_seeds, AttackConfig(attack), sampler, out, pipe, log=lambda s: None)
                row[attack] = {**{k: v for k, v in res["targets"][target].items() if k != "per_prompt"}, "threads": args.threads}
                print(f"[{method}] {target} {attack}: UA {row[attack]['UA_before']:.0f} -> {row[attack]['UA_after']:.0f}", flush=True)
                table_path.write_text(json.dumps(table, indent=1))
            write_markdown(args.out, table, targets, eval_seeds)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
