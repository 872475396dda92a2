"""Every unlearning method on the same targets and seeds: writes benchmarks/METHODS.md and a PNG grid per method.

    python scripts/bench_methods.py [--run activations/methods] [--methods saeuron,esd-x,...] [--eval-seeds 300-304]

For each method and each target (3 styles, 3 objects, fixed below), `saeuron unlearn` writes an
unlearned-model folder (default settings, seed 0) and `evaluate --unlearned` measures UA / IRA /
CRA, fidelity (Frechet distance on classifier features, changed-label share on kept prompts) on
the evaluation seeds, which no choice of any method looked at. SAeUron first builds a run like the
demo's (cache seeds 0-3, one SAE per hookpoint), tunes each target on the tuning seeds, and is
reported three times: as the paper (`saeuron-paper`: styles at 1 feature a step and multiplier -1,
objects tuned over 1-3 features a step x multipliers -1 ... -30), with this project's grid
(`saeuron`: styles at percentile 99.7, ~3 features, -1; objects over 99.5/99.7/99.9 x -1/-5/-10/-20)
and as its best variant (`saeuron-specific`: the `specific` selection, styles with a minimum
dominance tuned per style); `saeuron-paper-late` is the paper's with the first fifth of the denoising
steps left unablated for objects, `saeuron-paper-t5` the paper's tuned on 5 seeds, and `saeuron-paper-xattn` the paper's
with each object also ablated on SAEs of the five 16x16 cross-attention outputs, as the demo does; `saeuron-xattn` ablates
objects as the demo (~8 features a step of dominance 2 at the block, its multiplier and start tuned per object, and
the cross-attention sites). `saemnesia` fine-tunes
the run's two SAEs with concept labels (`saeuron supervise`, SAEmnesia) and ablates each target's bound latent, its
multiplier tuned over the paper's -1 ... -30 on the tuning seeds. Every step resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from saeuron.cache import count_rows  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.concept_set import Concept, ConceptSet  # noqa: E402
from saeuron.demo import OBJECT_HOOKPOINT, OBJECT_XATTN_HOOKPOINTS, STYLE_HOOKPOINT, DemoConfig, build_run  # noqa: E402
from saeuron.ablate import SETTING_DEFAULTS, load_ablation_site, sample_with_ablations  # noqa: E402
from saeuron.evaluate import TUNING_GRID, _tuning_record, default_judge, full_answer_set, generate_answer_set, paper_grid, paper_percentile, run_unlearned_evaluation, tune_target  # noqa: E402
from saeuron.pipelines import SamplerConfig, load_pipeline, resolve_sampler, sample, to_uint8  # noqa: E402
from saeuron.unlearn import load_unlearned, unlearn  # noqa: E402
from saeuron.methods.sae_ablation import record_sites  # noqa: E402
from saeuron.supervise import RECORD_FILE, SuperviseConfig, supervise  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import BENCH_HOOKPOINTS, attack_cells  # noqa: E402

TARGETS = ["style:neon", "style:ocean", "style:lava", "object:star", "object:ring", "object:heart"]
# name -> (method, SAeUron's selection rule, its setting per kind: "paper-fixed" (the paper's style setting: 1 feature a
# step, multiplier -1), "fixed" (this project's: 99.7, ~3 features, multiplier -1), "paper-grid" (tuned over the
# paper's 1-3 features x -1 ... -30) or a tuning grid)
# saeuron-xattn's object grid at the block: the demo's ~8 features a step of dominance 2, the paper's multipliers, and the start
XATTN_OBJECT_GRID = {"percentile": (99.5,), "multiplier": (-5.0, -10.0, -20.0, -30.0), "dominance": (2.0,), "start": (0.0, 0.2)}
FIXED_RULES = ("fixed", "paper-fixed")  # the settings no tuning chooses
VARIANTS = {
    "saeuron-paper": ("saeuron", "saeuron", {"style": "paper-fixed", "object": "paper-grid"}),
    "saeuron-paper-t5": ("saeuron", "saeuron", {"style": "paper-fixed", "object": "paper-grid"}),
    "saeuron-paper-late": ("saeuron", "saeuron", {"style": "paper-fixed", "object": "paper-grid"}),
    "saeuron-paper-dom2": ("saeuron", "saeuron", {"style": "paper-fixed", "object": "paper-grid"}),
    "saeuron-paper-xattn": ("saeuron", "saeuron", {"style": "paper-fixed", "object": "paper-grid"}),
    "saeuron-xattn": ("saeuron", "saeuron", {"style": "paper-fixed", "object": XATTN_OBJECT_GRID}),
    "saeuron-xattn-t5": ("saeuron", "saeuron", {"style": "paper-fixed", "object": XATTN_OBJECT_GRID}),
    "saeuron": ("saeuron", "saeuron", {"style": "fixed", "object": TUNING_GRID}),
    "saemnesia": ("saeuron", "assigned", {"style": "supervised-grid", "object": "supervised-grid"}),
    "saeuron-specific": ("saeuron", "specific", {"style": {"percentile": (99.7,), "multiplier": (-1.0,), "dominance": (0.0, 2.0, 3.0)},
                                                 "object": TUNING_GRID}),
    "esd-x": ("esd-x", None, None), "esd-u": ("esd-u", None, None), "uce": ("uce", None, None),
    "ca": ("ca", None, None), "spm": ("spm", None, None), "unguide": ("unguide", None, None), "sa": ("sa", None, None),
}
DEFAULT_TUNE_SEEDS = "100-101"  # SAeUron's tuning seeds on the bench (--tune-seeds)
# variants that change the tuning seeds (default --tune-seeds): saeuron-paper-t5 is saeuron-paper tuned on 5 seeds, not 2;
# saeuron-xattn-t5 is saeuron-xattn tuned on 5 (50 target images a grid point, not 20)
TUNE_SEEDS = {"saeuron-paper-t5": "100-104", "saeuron-xattn-t5": "100-104"}
# variants that change settings the grid holds fixed: saeuron-paper-late is saeuron-paper with the first fifth of the
# denoising steps unablated for objects (start 0.2, chosen with the demo's SAE on development seeds 200-204);
# saeuron-paper-dom2 is saeuron-paper whose object features must be fired at least twice as strongly by the target as
# by any other concept (minimum dominance 2: on the demo's SAE it lifted the star from 68 to 88 on seeds 200-204)
GRID_CHANGES = {"saeuron-paper-late": {"object": {"start": (0.2,)}}, "saeuron-paper-dom2": {"object": {"dominance": (2.0,)}}}
# variants that ablate a kind at more sites than the paper's one block, each at a fixed setting: saeuron-paper-xattn is
# saeuron-paper whose objects are also ablated at the outputs of the five 16x16 cross-attentions, on SAEs built as the
# demo builds them (run/xattn: cache seed 0, 256 latents from 400k tokens) at the demo's setting there (chosen for the
# star on development seeds 275-279 and 285-294; benchmarks/RESULTS.md, session 22); its object block keeps
# saeuron-paper's tuned setting (the same tuning record)
# saeuron-xattn ablates objects as the demo does: at the object block ~8 features a step (percentile 99.5 of 1,536) of
# dominance 2, its multiplier (the paper's -5 ... -30) and start (every step, or from a fifth on: the ring needs the
# first, the star the second) tuned per object (SAeUron's search) with the cross-attention sites on, at multiplier -5
# there (the star on development seeds 200-204 with this bench's CPU SAE: 82 at -1, 90 at -5; with the paper's setting
# at the block 62-66 whatever the cross-attention multiplier: benchmarks/RESULTS.md, session 23)
EXTRA_SITES = {"saeuron-paper-xattn": {"object": (OBJECT_XATTN_HOOKPOINTS, DemoConfig().xattn_setting)},
               **dict.fromkeys(("saeuron-xattn", "saeuron-xattn-t5"),
                               {"object": (OBJECT_XATTN_HOOKPOINTS, {**DemoConfig().xattn_setting, "multiplier": -5.0})})}
TUNED_AS = {"saeuron-paper-xattn": "saeuron-paper"}  # the same setting at the block: the paper's record, tuned without the other sites
XATTN_RUN = "xattn"  # the run's subfolder of the cross-attention SAEs (its own store: the bench's store has two hookpoints)
PUBLISHED = {  # UnlearnCanvas, SD 1.5 (BASELINES.md section 4): style UA / IRA / CRA, object UA / IRA / CRA
    "saeuron-paper": (95.80, 99.10, 99.40, 87.16, 85.57, 74.14), "esd-x": (98.58, 80.97, 93.96, 92.15, 55.78, 44.23),
    "uce": (98.40, 60.22, 47.71, 94.31, 39.35, 34.67), "ca": (60.82, 96.01, 92.70, 46.67, 90.11, 81.97),
    "spm": (60.94, 92.39, 84.33, 71.25, 90.79, 81.65), "saemnesia": (96.60, 98.67, 99.30, 94.65, 91.39, 88.48),
}


def slug(target: str) -> str:
    return target.replace(":", "-")


class WithFixedSites:
    """An ablation site to tune while other SAE sites ablate the same targets at fixed settings in the same pass (the
    `plan` / `sample` that `evaluate.tune_target` calls)."""

    def __init__(self, site, others: list[tuple[object, dict]]):
        self.site, self.others, self.selection = site, others, site.selection

    def plan(self, targets: list[str], params: dict[str, dict]) -> list[tuple]:
        return [(s.sae, s.hookpoint, s.plan(targets, params=p), s.capture)
                for s, p in [(self.site, params), *((o, {t: setting for t in targets}) for o, setting in self.others)]]

    def sample(self, pipe, edits: list[tuple], prompts, seeds, config) -> torch.Tensor:
        return sample_with_ablations(pipe, edits, prompts, seeds, config)


def extra_sites(run: Path, name: str, kind: str) -> list[tuple[Path, dict]]:
    """The variant's SAE sites beside the kind's block (EXTRA_SITES), each with its fixed setting."""
    hookpoints, setting = EXTRA_SITES.get(name, {}).get(kind, ((), {}))
    return [(run / XATTN_RUN / "saes" / h, setting) for h in hookpoints]


def sae_settings(pipe, run: Path, name: str, target: str, tune_seeds: list[int], sampler) -> tuple[list[str], list[dict], list[str]]:
    """SAeUron's unlearned folder for the target: its SAE sites (DIR@KIND), each site's {target: setting} and the folder's
    settings. The setting at the kind's block is fixed, or the best of the variant's grid on the tuning seeds alone
    (SAeUron's per-target search, as `evaluate --tune-seeds`), recorded with every grid point in
    run/tuning/<variant>/<target>.json (one file per job: jobs run in parallel); EXTRA_SITES add their fixed ones."""
    kind = Concept.parse(target).kind
    hookpoint = STYLE_HOOKPOINT if kind == "style" else OBJECT_HOOKPOINT
    _, selection, grids = VARIANTS[name]
    # with the assigned selection: the run's SAE after concept supervision (`supervised_saes`), its bound latent alone
    sae = run / ("supervised" if selection == "assigned" else "saes") / hookpoint
    tune_seeds = parse_seeds(TUNE_SEEDS[name]) if name in TUNE_SEEDS else tune_seeds
    site = load_ablation_site(sae, pipe, selection)
    width = site.scores.scores.shape[-1]
    rule = grids[kind]
    if selection == "assigned":
        rule = {**paper_grid(width), "percentile": (99.5,)}  # SAEmnesia searches the multiplier only (-1 ... -30)
    changes = GRID_CHANGES.get(name, {}).get(kind, {})
    extra = extra_sites(run, name, kind)
    if rule in FIXED_RULES:
        best = {"percentile": 99.7 if rule == "fixed" else paper_percentile(1, width), "multiplier": -1.0, "dominance": 0.0,
                **{k: v[0] for k, v in changes.items()}}
    else:
        record = run / "tuning" / TUNED_AS.get(name, name) / f"{slug(target)}.json"
        if not record.exists():
            grid = {**(paper_grid(width) if rule == "paper-grid" else rule), **changes}
            # with the variant's other sites on (one that takes another variant's record tunes as that one does)
            others = [] if name in TUNED_AS else [(load_ablation_site(d, pipe), setting) for d, setting in extra]
            tuned = tune_target(pipe, WithFixedSites(site, others) if others else site, target, tune_seeds, sampler, grid)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({**tuned, **_tuning_record(site, tune_seeds, sampler, grid, default_judge(), None),
                                          "fixed_sites": [{"sae": str(o.sae_dir), "setting": st} for o, st in others]}, indent=1))
        best = json.loads(record.read_text())
    best = {k: float(best.get(k, default)) for k, default in SETTING_DEFAULTS.items()}
    sites = [f"{sae}@{kind}", *(f"{d}@{kind}" for d, _ in extra)]
    return sites, [{target: best}, *({target: dict(setting)} for _, setting in extra)], [f"{k}={v}" for k, v in best.items()] + [f"selection={selection}"]


# rows each SAE's concept supervision sees: `saeuron supervise`'s 20 epochs over the demo's one-seed object cache
SUPERVISED_ROWS = 3_520_000


def supervised_saes(run: Path) -> None:
    """The run's two SAEs fine-tuned with concept supervision (`saeuron supervise`'s defaults, epochs scaled to
    SUPERVISED_ROWS) into run/supervised/, once, before any job reads them (an interrupted fine-tuning resumes)."""
    for hookpoint in (STYLE_HOOKPOINT, OBJECT_HOOKPOINT):
        out = run / "supervised" / hookpoint
        if not (out / RECORD_FILE).exists():
            epochs = max(1, round(SUPERVISED_ROWS / count_rows(run / "cache.h5", hookpoint)))
            print(f"supervising {hookpoint} ({epochs} epochs)", flush=True)
            supervise(SuperviseConfig(sae=str(run / "saes" / hookpoint), cache=str(run / "cache.h5"), out=str(out), epochs=epochs))


def run_job(pipe, run: Path, name: str, target: str, eval_seeds: list[int], tune_seeds: list[int], sampler, base_images) -> dict:
    """Unlearn one target with one variant and evaluate it on the evaluation seeds (both resumable), into
    run/results/<variant>/<target>.json."""
    method = VARIANTS[name][0]
    out = run / "results" / name / f"{slug(target)}.json"
    if out.exists():
        return json.loads(out.read_text())
    folder = run / "unlearned" / name / slug(target)
    if not (folder / "unlearn.json").exists():
        sae, site_settings, settings = sae_settings(pipe, run, name, target, tune_seeds, sampler) if method == "saeuron" else (None, None, [])
        print(f"[{name}] unlearning {target}", flush=True)
        unlearn(method, [target], folder, pipe, "minicanvas", ConceptSet.minicanvas(), 0, settings, sae=sae, log=lambda s: None,
                site_settings=site_settings)
    record = json.loads((folder / "unlearn.json").read_text())
    res = run_unlearned_evaluation(folder, eval_seeds, sampler, run / "eval" / name / f"{slug(target)}.json", None, pipe,
                                   base_images=base_images)
    m = res["targets"][target]
    storage = record["storage_bytes"] if method != "saeuron" else sum(f.stat().st_size for site in record_sites(record) for f in Path(site["sae"]).glob("*.safetensors"))
    row = {"UA": m["UA"], "IRA": m["IRA"], "CRA": m["CRA"], "frechet": m["fidelity"]["frechet_classifier_features"],
           "changed": m["fidelity"]["changed_label_share"], "wall_time_s": record["wall_time_s"], "storage_mb": storage / 1e6,
           "params": record["params"], "machine": machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(f"[{name}] {target}: UA {m['UA']:.1f} IRA {m['IRA']:.1f} CRA {m['CRA']:.1f}", flush=True)
    return row


def time_ratio(pipe, unlearned, sampler, n: int = 50) -> float:
    """Unlearned / plain generation time for the same n prompts, best of two, interleaved."""
    prompts, seeds = ["a star in neon style"] * n, list(range(n))
    plain, edited = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        sample(pipe, prompts, seeds, sampler)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        unlearned.generate(pipe, prompts, seeds, sampler)
        edited.append(time.perf_counter() - t0)
    return min(edited) / min(plain)


def grid_png(pipe, name: str, folders: dict[str, Path], sampler, path: Path, seed: int) -> None:
    """Per target: the same 6 prompts (3 of the target, 3 kept) before (upper row) and after (lower row)."""
    from PIL import Image

    rows = []
    for target, folder in folders.items():
        c = Concept.parse(target)
        if c.kind == "style":
            prompts = [f"a {o} in {c.value} style" for o in ("star", "ring", "moon")] + [f"a {o} in sunset style" for o in ("star", "ring", "moon")]
        else:
            prompts = [f"a {c.value} in {s} style" for s in ("neon", "ocean", "sketch")] + [f"a moon in {s} style" for s in ("neon", "ocean", "sketch")]
        seeds = [seed] * len(prompts)
        rows.append(to_uint8(sample(pipe, prompts, seeds, sampler)))
        rows.append(to_uint8(load_unlearned(folder, pipe).generate(pipe, prompts, seeds, sampler)))
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def mean_of(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def machine() -> str:
    """Where the numbers were measured (they move with the machine: float rounding changes SAEs and trained weights)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA, float32), torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def not_run(name: str, kind: str) -> str:
    """The cell of a kind a variant did not run: a variant that changes only the other kind has saeuron-paper's cells."""
    _, selection, rules = VARIANTS.get(name, (None, None, None))
    _, paper_selection, paper_rules = VARIANTS["saeuron-paper"]
    same = name != "saeuron-paper" and rules is not None and (selection, rules[kind]) == (paper_selection, paper_rules[kind]) \
        and kind not in GRID_CHANGES.get(name, {}) and kind not in EXTRA_SITES.get(name, {}) \
        and (name not in TUNE_SEEDS or rules[kind] in FIXED_RULES)  # other tuning seeds change only what is tuned
    return "as saeuron-paper" if same else "not run"


def read_rows(folder: Path, name: str) -> dict[str, dict]:
    """A variant's rows per target in folder/results/<variant>/ (none: {})."""
    files = {t: folder / "results" / name / f"{slug(t)}.json" for t in TARGETS}
    return {t: json.loads(f.read_text()) for t, f in files.items() if f.exists()}


def table_rows(entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """One row per variant and machine, in VARIANTS order: a variant measured on two machines (its SAEs trained on a GPU
    and on the CPU) shows both rows; a later entry replaces an earlier one of the same variant and machine (this run's
    rows replace --with-results ones)."""
    table = {(name, tuple(sorted({r.get("machine", "") for r in t["targets"].values()}))): (name, t) for name, t in entries}
    return sorted(table.values(), key=lambda e: list(VARIANTS).index(e[0]))


def write_markdown(out: Path, table: list[tuple[str, dict]], args, eval_seeds: list[int]) -> None:
    """The table: one row per (variant, machine) entry of `table`, in its order."""
    cmd = "python scripts/bench_methods.py " + " ".join(sys.argv[1:])
    machines = sorted({r.get("machine", machine()) for _, t in table for r in t["targets"].values()}) or [machine()]
    other_tuning = "".join(f" ({n}: {TUNE_SEEDS[n]})" for n in dict.fromkeys(n for n, _ in table) if n in TUNE_SEEDS)
    lines = ["# Unlearning methods side by side on minicanvas", "",
             f"Written by `{cmd.strip()}` ({time.strftime('%Y-%m-%d')}). Targets {', '.join(TARGETS)}; every method at its "
             f"default setting (`saeuron unlearn --method M --show`), seed 0; evaluation seeds {eval_seeds[0]}-{eval_seeds[-1]} "
             f"(UnlearnCanvas metrics by the minicanvas classifier over the 110-prompt grid), which no setting of any method "
             "looked at. SAeUron tuned on seeds " + args.tune_seeds + other_tuning + ", cached on seeds " + args.cache_seeds + ". "
             "Fidelity on kept prompts: Frechet distance of classifier features, share of images whose labels changed. "
             "Time: generation of the same 50 images unlearned / plain. Storage: the method's files (SAeUron: its SAE). "
             "Machine: " + ("; ".join(f"[{i + 1}] {m}" for i, m in enumerate(machines)) + " (each row marked by its machine)"
                            if len(machines) > 1 else machines[0]) + (f"; {args.jobs} jobs in parallel processes (unlearn times include their "
             "contention; generation times were measured alone)" if args.jobs > 1 else "") + ".", "",
             "| method | style UA | style IRA | style CRA | object UA | object IRA | object CRA | Frechet | changed labels | unlearn time (s/target) | generation time / plain | storage (MB/target) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if args.with_results:
        lines[2] += (f" Rows not run by this command come from {', '.join(f'`{d}`' for d in args.with_results)} (`--with-results`): "
                     "measured by an earlier run, whose command and machine `benchmarks/RESULTS.md` gives.")

    def label(name: str, t: dict) -> str:
        here = sorted({r.get("machine", machine()) for r in t["targets"].values()})
        return name if len(machines) == 1 else f"{name} [{', '.join(str(machines.index(m) + 1) for m in here)}]"
    for name, t in table:
        rows = list(t["targets"].values())
        styles = [r for k, r in t["targets"].items() if k.startswith("style:")]
        objects = [r for k, r in t["targets"].items() if k.startswith("object:")]
        cells = [f"{mean_of(kind, k):.1f}" if kind else not_run(name, kind_name) for kind, kind_name in ((styles, "style"), (objects, "object"))
                 for k in ("UA", "IRA", "CRA")]
        lines.append(f"| {label(name, t)} | " + " | ".join(cells) + f" | {mean_of(rows, 'frechet'):.2f} | {mean_of(rows, 'changed'):.1f}% | "
                     f"{mean_of(rows, 'wall_time_s'):.1f} | {t.get('time_ratio', float('nan')):.2f} | {mean_of(rows, 'storage_mb'):.2f} |")
    lines += ["", "Per target (UA / IRA / CRA):", "", "| method | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
    for name, t in table:
        lines.append(f"| {label(name, t)} | " + " | ".join(
            f"{t['targets'][x]['UA']:.0f} / {t['targets'][x]['IRA']:.0f} / {t['targets'][x]['CRA']:.0f}" if x in t["targets"] else "" for x in TARGETS) + " |")
    lines += ["", "## Published UnlearnCanvas rows (Stable Diffusion 1.5, 50 styles x 20 objects: not comparable in absolute terms)", "",
              "| method | style UA | style IRA | style CRA | object UA | object IRA | object CRA |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for m, row in PUBLISHED.items()]
    lines += ["", "ESD-u, UnGuide and Selective Amnesia have no UnlearnCanvas row (UnlearnCanvas's ESD is ESD-x; UnGuide's paper evaluates CIFAR-10 classes and I2P; SA's code is in the UnlearnCanvas repository but not in its table). Grids: `benchmarks/methods/<method>.png` "
              "(per target, upper row the base model, lower row the unlearned one; 3 prompts of the target, 3 kept).", "",
              "What each row changes from its paper, which seeds each choice looked at, and what is weak: `benchmarks/RESULTS.md`."]
    lines += attack_section(args.attacks, eval_seeds)
    out.write_text("\n".join(lines) + "\n")


def attack_section(path: Path, eval_seeds: list[int]) -> list[str]:
    """UA after each attack per method, from the attack bench's table (`scripts/bench_attacks.py` writes it beside
    benchmarks/ATTACKS.md, with the threat model and the command); nothing when there is none."""
    if not path.exists():
        return []
    from saeuron.attack import ATTACKS

    lines = ["", "## Under attack", "",
             f"UA (%) on evaluation seeds {eval_seeds[0]}-{eval_seeds[-1]} without an attack and after each white-box attack "
             f"(300 Adam steps, lr 0.01), each method at its default setting. From `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`, "
             "written by `scripts/bench_attacks.py`; the threat model, the command and the machine: `benchmarks/ATTACKS.md`. "
             "The attack run builds its own SAEs (as this bench does, on the CPU) and tunes SAeUron's objects on them (seeds "
             "100-101), so SAeUron's UA without attack can differ from the table above.", "",
             "| method | target | UA, no attack | " + " | ".join(f"UA after {a}" for a in ATTACKS) + " |", "|---|---|---|" + "---|" * len(ATTACKS)]
    for method, rows in json.loads(path.read_text()).items():
        for target, row in rows.items():
            before, after, _, _ = attack_cells(row, ATTACKS)
            lines.append(f"| {method} | {target} | {before} | " + " | ".join(after) + " |")
    return lines


# slowest first, so that parallel jobs finish together
COST_ORDER = ["ca", "spm", "unguide", "sa", "saeuron-paper-t5", "saeuron-paper", "saeuron-paper-xattn", "saeuron-xattn-t5", "saeuron-xattn", "saeuron-paper-late", "saeuron-paper-dom2", "saemnesia", "saeuron-specific", "saeuron", "esd-u", "esd-x", "uce"]


def run_jobs(jobs: list[tuple[str, str]], n: int, args) -> list[tuple[str, str]]:
    """Each (variant, target) in its own process, n at a time (on a GPU the small model leaves it mostly idle, so
    parallel processes fill it); returns the jobs that failed. Logs in run/logs/."""
    import os
    import subprocess

    threads = max(1, (os.cpu_count() or 2) // n)
    (args.run / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(jobs), {}, []
    while pending or running:
        while pending and len(running) < n:
            name, target = pending.pop(0)
            log = args.run / "logs" / f"{name}-{slug(target)}.log"
            cmd = [sys.executable, __file__, "--run", str(args.run), "--device", args.device, "--eval-seeds", args.eval_seeds,
                   "--tune-seeds", args.tune_seeds, "--cache-seeds", args.cache_seeds, "--threads", str(threads),
                   "--job", f"{name}@{target}"]
            running[subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)] = (name, target, log)
        time.sleep(1)
        for proc in [q for q in running if q.poll() is not None]:
            name, target, log = running.pop(proc)
            tail = log.read_text().strip().splitlines()[-1:] or [""]
            print(f"[{name}] {target}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode}), see {log}'}: {tail[0]}", flush=True)
            if proc.returncode:
                failed.append((name, target))
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "activations" / "methods")
    p.add_argument("--methods", default=",".join(VARIANTS))
    p.add_argument("--targets", default=",".join(TARGETS), help="a subset of the fixed targets (for a quick check)")
    p.add_argument("--cache-seeds", default="0-3")
    p.add_argument("--tune-seeds", default=DEFAULT_TUNE_SEEDS)
    p.add_argument("--eval-seeds", default="300-304")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "METHODS.md")
    p.add_argument("--png-dir", type=Path, default=ROOT / "benchmarks" / "methods", help="where the per-method grids go")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--jobs", type=int, default=1, help="(variant, target) jobs run in parallel processes (on a GPU: 8-14)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    p.add_argument("--with-results", type=Path, action="append", default=[],
                   help="a folder of another run's results/<variant>/ (e.g. benchmarks/methods/h200) whose rows the table shows "
                        "beside this run's, each row marked by its machine (a variant this run measured shows this run's row)")
    p.add_argument("--attacks", type=Path, default=ROOT / "benchmarks" / "ATTACKS.json",
                   help="the attack bench's table (scripts/bench_attacks.py), shown under the methods' table when present")
    p.add_argument("--table-only", action="store_true",
                   help="only rewrite the table from the --with-results folders and --attacks (no model is loaded, nothing runs)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # a worker: VARIANT@TARGET
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(m for m in args.methods.split(",") if m))  # a name given twice would race with itself
    targets = list(dict.fromkeys(t for t in args.targets.split(",") if t))
    unknown = [m for m in names if m not in VARIANTS] + [t for t in targets if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown methods or targets {unknown}; valid: {', '.join(VARIANTS)}; {', '.join(TARGETS)}")
    eval_seeds, tune_seeds, cache_seeds = parse_seeds(args.eval_seeds), parse_seeds(args.tune_seeds), parse_seeds(args.cache_seeds)
    tune_all = set(tune_seeds).union(*(parse_seeds(TUNE_SEEDS[n]) for n in names if n in TUNE_SEEDS))
    if set(eval_seeds) & (tune_all | set(cache_seeds)):
        raise SystemExit("evaluation seeds must be disjoint from cache and tuning seeds")
    run = args.run
    if args.table_only:  # every row from --with-results and --attacks: no model is loaded, nothing runs
        names, pipe, sampler, base_images = [], None, None, None
    else:
        pipe = load_pipeline(device=args.device)
        sampler = resolve_sampler(pipe, SamplerConfig())
        base_path = run / "base_images.pt"
        if base_path.exists():
            base_images = torch.load(base_path)
        else:
            run.mkdir(parents=True, exist_ok=True)
            base_images = generate_answer_set(pipe, full_answer_set(eval_seeds), sampler)
            torch.save(base_images, base_path.with_suffix(".partial"))
            base_path.with_suffix(".partial").rename(base_path)
    if args.job:
        name, target = args.job.split("@")
        run_job(pipe, run, name, target, eval_seeds, tune_seeds, sampler, base_images)
        return
    if any(VARIANTS[n][0] == "saeuron" for n in names):
        build_run(run, DemoConfig(cache_seeds=tuple(cache_seeds), eval_seeds=tuple(eval_seeds)), pipe, BENCH_HOOKPOINTS)
    if extra := {h for n in names for hookpoints, _ in EXTRA_SITES.get(n, {}).values() for h in hookpoints}:
        build_run(run / XATTN_RUN, DemoConfig(eval_seeds=tuple(eval_seeds)), pipe, tuple(sorted(extra)))
    if any(VARIANTS[n][1] == "assigned" for n in names):
        supervised_saes(run)
    jobs = [(n, t) for n in sorted(names, key=lambda n: COST_ORDER.index(n) if n in COST_ORDER else len(COST_ORDER)) for t in targets
            if not (run / "results" / n / f"{slug(t)}.json").exists()]
    failed = run_jobs(jobs, args.jobs, args) if args.jobs > 1 else []
    for name, target in ([] if args.jobs > 1 else jobs):
        run_job(pipe, run, name, target, eval_seeds, tune_seeds, sampler, base_images)
    entries = [(name, {"targets": rows, "time_ratio": json.loads((other / "results" / name / "time_ratio.json").read_text())})
               for other in args.with_results for name in VARIANTS if (rows := read_rows(other, name))]  # measured elsewhere
    for name in names:  # sequential, alone on the machine: generation time and the grids
        if not (rows := read_rows(run, name)):
            continue
        folders = {t: run / "unlearned" / name / slug(t) for t in rows}
        ratio_file = run / "results" / name / "time_ratio.json"
        if not ratio_file.exists():
            ratio_file.write_text(json.dumps(time_ratio(pipe, load_unlearned(next(iter(folders.values())), pipe), sampler)))
        entries.append((name, {"targets": rows, "time_ratio": json.loads(ratio_file.read_text())}))
        png = args.png_dir / f"{name}.png"
        if not png.exists() and set(rows) >= set(targets):
            grid_png(pipe, name, folders, sampler, png, eval_seeds[0])
    write_markdown(args.out, table_rows(entries), args, eval_seeds)
    print(args.out.read_text())
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed: {failed}")


if __name__ == "__main__":
    main()
