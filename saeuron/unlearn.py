"""`saeuron unlearn`: run any unlearning method into an unlearned-model folder, and read such folders back.

A folder holds `unlearn.json` (method, targets, every hyperparameter with the paper's value
and the reason for any difference, seed, base model, wall time, peak memory) and the method's
weights: edited UNet tensors as safetensors (ESD, UCE, CA), a peft adapter (SPM), or for
SAeUron a reference to its SAE folder and settings. `load_unlearned(folder, pipe)` gives an
object that generates as the unlearned model through the one sampling loop.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .concept_set import ConceptSet
from .errors import UserError, read_json

RECORD_FILE = "unlearn.json"
FORMAT = 1


# ---------------------------------------------------------------- the base model's fingerprint


def model_fingerprint(pipe) -> dict:
    """What identifies the base model an unlearned folder belongs to: the UNet's class, parameter count and the norms of
    its first 32 parameter tensors (by name), compared with a tolerance so that float16 and float32 copies agree."""
    named = sorted(pipe.unet.named_parameters())
    norms = [float(p.detach().float().norm()) for _, p in named[:32]]
    return {"unet": type(pipe.unet).__name__, "parameters": sum(p.numel() for _, p in named), "norms": norms}


def same_model(a: dict, b: dict) -> bool:
    if a.get("unet") != b.get("unet") or a.get("parameters") != b.get("parameters") or len(a.get("norms", [])) != len(b.get("norms", [])):
        return False
    return all(abs(x - y) <= 2e-3 * max(abs(x), abs(y), 1e-6) for x, y in zip(a["norms"], b["norms"]))


# ---------------------------------------------------------------- reading folders


@dataclass
class Unlearned:
    """An unlearned-model folder, ready to generate on a base pipeline."""

    folder: Path
    record: dict

    @property
    def method(self):
        from .methods import get_method

        return get_method(self.record["method"])

    @property
    def chain(self) -> list["Unlearned"]:
        """The folders whose edits this one was fitted on top of (`unlearn --after`), oldest first, then this one."""
        if not self.record.get("after"):
            return [self]
        return load_unlearned(self.record["after"]).chain + [self]

    @property
    def targets(self) -> list[str]:
        """Every concept the model erases: those of the folders it was fitted after, then its own."""
        return list(dict.fromkeys(t for u in self.chain for t in u.record["targets"]))

    @contextlib.contextmanager
    def applied(self, pipe, prompts: list[str], config) -> Iterator:
        """Within the block, `pipelines.sample` with the yielded hooks generates as the unlearned model (each folder of
        the chain applied in order, the hooks of all of them called)."""
        from .methods.base import SampleHooks

        with contextlib.ExitStack() as stack:
            yield SampleHooks.together([stack.enter_context(u.method.applied(pipe, u.folder, u.record, prompts, config))
                                        for u in self.chain])

    def target_params(self, target: str) -> dict:
        """The settings of the chain's folder that erased `target` (SAeUron: the target's own ablation setting)."""
        u = next(u for u in reversed(self.chain) if target in u.record["targets"])
        return u.method.target_params(u.record, target)

    def check_evaluation_seeds(self, seeds: list[int]) -> None:
        """Refuse judging on seeds that a choice stored in the chain's folders looked at (SAeUron: scores, tuning)."""
        for u in self.chain:
            u.method.check_evaluation_seeds(u.folder, u.record, seeds)

    @property
    def summary(self) -> str:
        return f"{self.record['method']}: {', '.join(self.targets)} ({self.folder.name})"

    def describe(self) -> dict:
        """What results.json records of the folder (`evaluate.evaluate_unlearning` takes it as its site)."""
        return {"method": self.record["method"], "unlearned": str(self.folder), "method_params": self.record["params"]}

    def plan(self, targets: list[str], params=None) -> list[str]:
        """The targets an evaluation erases: this folder's, all together (its weights cannot erase fewer)."""
        if set(targets) != set(self.targets):
            raise UserError(f"{str(self.folder)!r} erases {', '.join(self.targets)}, not {', '.join(targets)}")
        return targets

    def sample(self, pipe, plan, prompts, seeds, config) -> torch.Tensor:
        return self.generate(pipe, prompts, seeds, config)

    def generate(self, pipe, prompts, seeds, config) -> torch.Tensor:
        """Images of the unlearned model, N x 3 x H x W in [0, 1], as `pipelines.sample` gives them."""
        from .pipelines import resolve_sampler, sample

        config = resolve_sampler(pipe, config)
        prompts = list(prompts)
        with torch.no_grad(), self.applied(pipe, prompts, config) as hooks:
            return sample(pipe, prompts, seeds, config, on_step=hooks.on_step, on_batch=hooks.on_batch)


def load_unlearned(folder: str | Path, pipe=None) -> Unlearned:
    """Open an unlearned-model folder; with `pipe`, refuse one made for another base model."""
    from .methods import methods

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"unlearned-model folder {str(folder)!r} not found" if not folder.exists() else
                        f"{str(folder)!r} is a file; give an unlearned-model folder (written by `saeuron unlearn`)")
    path = folder / RECORD_FILE
    if not path.is_file():
        raise UserError(f"{str(folder)!r} is not an unlearned-model folder: it has no {RECORD_FILE} (write one with `saeuron unlearn`)")
    record = read_json(path, "unlearned-model record")
    if not isinstance(record, dict) or record.get("method") not in methods() or not isinstance(record.get("targets"), list):
        raise UserError(f"{str(path)!r} is not a saeuron unlearn record (no known method and targets)")
    weights = record.get("weights")
    if weights and not (folder / weights).is_file():
        raise UserError(f"{str(folder)!r} lacks its weights file {weights!r}")
    if pipe is not None and not same_model(record.get("base_model", {}).get("fingerprint", {}), model_fingerprint(pipe)):
        raise UserError(f"{str(folder)!r} was made for the base model {record.get('base_model', {}).get('name')!r}, "
                        f"not the one loaded now; give --model {record.get('base_model', {}).get('name')}")
    return Unlearned(folder, record)


def find_unlearned(run_dir: str | Path) -> list[Path]:
    """The unlearned-model folders of a run: `<run>/unlearned/*/unlearn.json`."""
    root = Path(run_dir) / "unlearned"
    return sorted(p.parent for p in root.glob(f"*/{RECORD_FILE}")) if root.is_dir() else []


# ---------------------------------------------------------------- running a method


def parse_settings(method, pairs: list[str]) -> dict:
    """The method's hyperparameters: its defaults, with `KEY=VALUE` overrides of the same type."""
    params = {k: h.value for k, h in method.defaults.items()}
    choices = {k: h.choices for k, h in method.defaults.items() if h.choices}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in params:
            raise UserError(f"bad --set {pair!r}: {method.name}'s settings are {', '.join(f'{k}=' for k in params)}")
        default = params[key]
        try:
            if isinstance(default, str):  # "tuned" (SAeUron: the stored value) or a number; else a name
                value = float(text) if default == "tuned" and text != "tuned" else text
            else:
                value = type(default)(text)
        except ValueError:
            raise UserError(f"bad --set {pair!r}: {key} takes a {type(default).__name__}") from None
        if isinstance(value, float) and not torch.isfinite(torch.tensor(value)):
            raise UserError(f"bad --set {pair!r}: {key} must be a finite number")
        if isinstance(value, (int, float)) and key in ("iterations", "batch_size", "bank_seeds", "steps", "anchors", "rank", "anchor_images",
                                                       "repeats", "replay_seeds", "fisher_timesteps") and value < 1:
            raise UserError(f"bad --set {pair!r}: {key} must be >= 1")
        if key in choices and value not in choices[key]:
            raise UserError(f"bad --set {pair!r}: {key} is one of {', '.join(choices[key])}")
        params[key] = value
    return params


def check_chain(method, previous: "Unlearned | None", targets: list[str]) -> None:
    """Sequential unlearning (`--after`): methods that edit weights chain (any of them after any other); SPM composes its
    adapters (SPM after SPM, UnGuide after UnGuide); SAeUron erases several concepts at once."""
    from .methods import methods

    if previous is None:
        return
    chaining = ", ".join(n for n, m in methods().items() if m.sequential == "chain")
    composing = ", ".join(n for n, m in methods().items() if m.sequential == "compose")
    if method.sequential is None:
        raise UserError(f"--after chains weight edits ({chaining}) or composes adapters of one method ({composing}), not {method.name}"
                        + ("; SAeUron merges feature sets: give every concept to --targets" if method.name == "saeuron" else ""))
    if method.sequential == "chain" and (bad := [u.record["method"] for u in previous.chain if u.method.sequential != "chain"]):
        raise UserError(f"--after {str(previous.folder)!r}: its chain holds {', '.join(dict.fromkeys(bad))}, which edits no weights; "
                        f"only {chaining} chain")
    if method.sequential == "compose" and (bad := [u.record["method"] for u in previous.chain if u.method.name != method.name]):
        raise UserError(f"--after {str(previous.folder)!r}: its chain holds {', '.join(dict.fromkeys(bad))}; {method.name} composes only with "
                        f"{method.name} folders")
    if again := [t for t in targets if t in previous.targets]:
        raise UserError(f"--after {str(previous.folder)!r} already erases {', '.join(again)}")


def unlearn(method_name: str, targets: list[str], out: Path, pipe, model: str, concept_set: ConceptSet, seed: int = 0,
            settings: list[str] | None = None, sae: str | list[str] | None = None, log=print, after: Path | None = None,
            site_settings: list[dict] | None = None) -> dict:
    """Fit the method and write the unlearned-model folder (built in a side folder, moved into place when complete);
    with `after`, fit it on the model that folder describes (sequential unlearning). SAeUron: `sae` is one SAE folder or
    several, and `site_settings` optionally gives each its {target: setting}."""
    from .methods import FitContext, get_method
    from .methods.base import Stopwatch
    from .pipelines import SamplerConfig

    method = get_method(method_name)
    params = parse_settings(method, settings or [])
    previous = load_unlearned(after, pipe) if after is not None else None
    check_chain(method, previous, targets)
    if (out / RECORD_FILE).exists():
        raise UserError(f"{str(out)!r} already holds an unlearned model; choose another --out")
    fingerprint = model_fingerprint(pipe)  # of the base model, before any chained edit
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(seed)
    watch = Stopwatch(pipe.unet.device)
    # a chaining method fits on the previous model; a composing one on the base model, to be applied beside it
    with previous.applied(pipe, [], SamplerConfig()) if previous and method.sequential == "chain" else contextlib.nullcontext():
        extra = method.fit(FitContext(pipe, targets, concept_set, params, seed, work, sae=sae, site_settings=site_settings, log=log))
    if previous:
        extra["after"] = str(previous.folder.resolve())
    record = {
        "format": FORMAT, "method": method.name, "summary": method.summary, "targets": targets, "seed": seed, "params": params,
        "paper": {k: h.paper for k, h in method.defaults.items()},
        "deviations": {k: h.why for k, h in method.defaults.items() if h.why and params[k] == h.value and h.value != h.paper},
        "notes": {k: h.why for k, h in method.defaults.items() if h.why and not (params[k] == h.value and h.value != h.paper)},
        "base_model": {"name": model, "fingerprint": fingerprint, "dtype": str(pipe.unet.dtype).removeprefix("torch.")},
        "concept_set": {"name": concept_set.name, "prompts": len(concept_set.rows), "sha256": concept_set.digest()},
        **watch.record(), **extra,
    }
    record["storage_bytes"] = sum(f.stat().st_size for f in work.iterdir() if f.is_file())
    (work / RECORD_FILE).write_text(json.dumps(record, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():
        f.replace(out / f.name)
    work.rmdir()
    return record


def unlearning_concept_set(model: str, prompts_file: str | None) -> ConceptSet:
    """The labelled prompts a method trains on: --prompts, else minicanvas's own."""
    from .pipelines import MINICANVAS

    if prompts_file:
        return ConceptSet.from_file(prompts_file)
    if model == MINICANVAS:
        return ConceptSet.minicanvas()
    raise UserError("give --prompts LABELLED_FILE (.csv / .jsonl): the prompts of the targets (and the kept concepts) to unlearn on")


def _cmd_unlearn(args) -> None:
    from .cli_args import check_output, device_from_args
    from .evaluate import parse_target_spec
    from .methods import get_method
    from .pipelines import load_pipeline

    method = get_method(args.method)
    if args.show:
        for k, h in method.defaults.items():
            print(f"{k}={h.value}\t(paper: {h.paper}){'; one of ' + ', '.join(h.choices) if h.choices else ''}"
                  f"{'  ' + h.why if h.why else ''}")
        return
    if not args.targets or not args.out:
        raise UserError("give --targets and --out (or --show to list the method's settings)")
    parse_settings(method, args.set or [])
    concept_set = unlearning_concept_set(args.model, args.prompts)
    targets = parse_target_spec(args.targets, concept_set.concepts())
    out = check_output(args.out, "unlearned-model folder", folder=True)
    if (out / RECORD_FILE).exists():
        raise UserError(f"{str(out)!r} already holds an unlearned model; choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} is not empty; give a new or empty folder")
    previous = load_unlearned(args.after) if args.after else None  # the folder itself first; the base model once loaded
    check_chain(method, previous, targets)
    if method.name == "saeuron" and not args.sae:
        raise UserError("--method saeuron needs --sae DIR (an SAE folder with concepts.h5 from `saeuron score`)")
    if method.name != "saeuron" and args.sae:
        raise UserError(f"--sae is for --method saeuron, not {method.name}")
    device, dtype = device_from_args(args)
    pipe = load_pipeline(args.model, dtype, device)
    record = unlearn(method.name, targets, out, pipe, args.model, concept_set, args.seed, args.set, args.sae,
                     after=Path(args.after) if args.after else None)
    print(f"{method.name} unlearned {', '.join(targets)} in {record['wall_time_s']:.1f} s "
          f"(peak {record['peak_memory_mb']:.0f} MB, {record['storage_bytes'] / 1e6:.2f} MB on disk) -> {out}")


def register_cli(sub) -> None:
    """Add `unlearn`."""
    from .cli import command_help
    from .cli_args import SEED, add_device_args
    from .methods import methods

    p = sub.add_parser("unlearn", help=command_help("unlearn"))
    p.add_argument("--method", required=True, help=f"one of {', '.join(methods())}")
    p.add_argument("--targets", help="KIND:VALUE[,KIND:VALUE...] or all-KINDs: the concepts to erase (one model for all of them)")
    p.add_argument("--out", help="the unlearned-model folder to write (new or empty)")
    p.add_argument("--model", default="minicanvas", help="base model: minicanvas (default), a diffusers folder or a hub id")
    p.add_argument("--prompts", help="labelled prompt file (.csv / .jsonl) the method trains on (default: minicanvas's prompts)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the method's sampling and training (default 0)")
    p.add_argument("--sae", help="--method saeuron: the SAE folder (with concepts.h5) whose features are ablated; several, "
                                 "comma-separated (SAEs of different hookpoints), ablate together, each with its own tuned settings; "
                                 "DIR@KIND limits a folder to the targets of that kind (e.g. A@style,B@object)")
    p.add_argument("--after", help="sequential unlearning: fit on the model of this unlearned-model folder (esd-x, esd-u, uce, ca, sa), "
                                   "or, for spm and unguide, fit on the base model and apply beside that folder's adapters (of the same method only); "
                                   "the new folder erases its targets and the chain's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method setting (repeatable); --show lists them")
    p.add_argument("--show", action="store_true", help="print the method's settings, the paper's values and why they differ, and exit")
    add_device_args(p)
    p.set_defaults(func=_cmd_unlearn)
