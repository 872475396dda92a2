"""`saeuron attack`: white-box attacks on an unlearned-model folder, judged on fresh seeds.

Each attack gets images of the erased concept and the gradients of the unlearned model. The images
are the base model's own generations of the target's prompts, on attack seeds disjoint from the
evaluation seeds. The attacks:

- `unlearndiffatk` (Zhang et al., ECCV 2024), soft. Per target prompt, continuous token embeddings
  sit at the prompt's free positions: its template words and up to `free_pads` padding slots; the
  concept words stay. They are optimised to minimise the unlearned model's own denoising loss on the
  concept's images. The paper optimises k = 5 one-hot-relaxed prefix tokens. A minicanvas prompt
  has 8 positions, so its budget is the three template words and its one free slot.
- `inversion` (concept inversion, Pham et al., ICLR 2024): one embedding takes the place of the
  concept's word in every prompt of the target. It is learned on the unlearned model from the same
  images, then used to generate.

SAeUron's ablation stays in the graph: its hook is differentiable, as in the paper's evaluation.
The attack writes `attack.json` with UA before and after the attack on the evaluation seeds, per
target and per prompt. It also saves the learned embeddings, and a PNG per target: the first
evaluation seed, before (upper row) and after (lower row).

Threat model: the attacker has white-box gradients through the unlearned model (its weights or its
hook) and controls the text embeddings. The attacker does not undo the method's edit; relearning
with the weights in hand is another column.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from .concept_set import Concept, ConceptSet
from .errors import UserError
from .methods.base import diffusion_target

ATTACKS = ("unlearndiffatk", "inversion")
RESULT_FILE = "attack.json"


@dataclass(frozen=True)
class AttackConfig:
    """An attack and its budget: Adam at UnlearnDiffAtk's lr 0.01 on embeddings (entries of std ~0.05 on minicanvas), 300
    steps of a batch with one concept image per prompt. A positive control (inversion of neon on a UCE model that erased
    ocean, neon intact: UA 0 after 100 steps) shows the budget learns a style; CCE's published budget is 5000 steps."""

    attack: str
    iterations: int = 300
    lr: float = 1e-2
    image_seeds: tuple[int, ...] = (400, 401, 402, 403)
    free_pads: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise UserError(f"unknown attack {self.attack!r}; valid: {', '.join(ATTACKS)}")
        if self.iterations < 1 or not self.lr > 0:
            raise UserError(f"an attack needs iterations >= 1 and lr > 0, got {self.iterations} and {self.lr}")
        if not self.image_seeds:
            raise UserError("an attack needs at least one image seed (images of the concept it recovers)")


class EmbeddingOverride:
    """Within the block, the rows of the text encoder's input whose token ids equal a registered prompt's get the given
    vectors at the given positions; other rows (the unconditional half, other prompts) are untouched."""

    def __init__(self, pipe):
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise UserError("attacks support minicanvas and Stable Diffusion 1.x / 2.x (one text encoder), not SDXL")
        self.module = pipe.text_encoder.get_input_embeddings()
        self.table: dict[tuple[int, ...], tuple[list[int], torch.Tensor]] = {}
        self.enabled = True
        self._handle = None

    def set(self, ids: tuple[int, ...], positions: list[int], vectors: torch.Tensor) -> None:
        self.table[tuple(ids)] = (list(positions), vectors)

    def _hook(self, module, inputs, output):
        if not self.enabled:
            return None
        rows = [(r, self.table[tuple(ids)]) for r, ids in enumerate(inputs[0].tolist()) if tuple(ids) in self.table]
        if not rows:
            return None
        out = output.clone()
        for r, (positions, vectors) in rows:
            out[r, positions] = vectors.to(out.dtype)
        return out

    def __enter__(self) -> "EmbeddingOverride":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def prompt_ids(pipe, prompt: str) -> tuple[int, ...]:
    """The token ids the pipeline's text encoder sees for a prompt (padded to the tokenizer's length)."""
    tok = pipe.tokenizer
    return tuple(tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids)


def word_positions(pipe, prompt: str, words: list[str]) -> list[int]:
    """Positions of the tokens of `words` in the prompt's ids."""
    return _positions_of(pipe, prompt_ids(pipe, prompt), words)


def _positions_of(pipe, ids: tuple[int, ...], words: list[str]) -> list[int]:
    wanted = {i for w in words for i in pipe.tokenizer(w, add_special_tokens=False).input_ids}
    return [i for i in range(1, _eos(pipe, ids)) if ids[i] in wanted]


def free_positions(pipe, prompt: str, keep_words: list[str], free_pads: int) -> list[int]:
    """UnlearnDiffAtk's budget on a templated prompt: every word that is not a concept word, and up to `free_pads`
    padding slots after the end token."""
    ids = prompt_ids(pipe, prompt)
    eos = _eos(pipe, ids)
    keep = set(_positions_of(pipe, ids, keep_words))
    template = [i for i in range(1, eos) if i not in keep]
    return template + list(range(eos + 1, min(len(ids), eos + 1 + free_pads)))


def _eos(pipe, ids: tuple[int, ...]) -> int:
    eos = pipe.tokenizer.eos_token_id
    return ids.index(eos, 1) if eos in ids[1:] else len(ids)


def sampler_schedule(pipe, steps: int, device) -> object:
    """A copy of the pipeline's scheduler set to the sampler's `steps` (the pipeline's own stays untouched)."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def denoising_loss(pipe, hooks, scheduler, x0: torch.Tensor, cond: dict, gen: torch.Generator) -> torch.Tensor:
    """The model's own training loss on clean latents `x0` at one step of the sampler's schedule (`sampler_schedule`,
    so that SAeUron's per-step plan applies), drawn from `gen`; eps or v target, whichever the model predicts."""
    i = int(torch.randint(len(scheduler.timesteps), (1,), generator=gen))
    t = scheduler.timesteps[i]
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
    ts = t.expand(len(x0)).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, ts)
    if hooks.on_step is not None:
        hooks.on_step(i, int(t))
    pred = pipe.unet(scheduler.scale_model_input(x_t, t), t, **cond).sample
    target = diffusion_target(scheduler, x0, noise, ts)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def _init_vectors(pipe, config: AttackConfig, target: str, prompts: list[str], rows: list[dict], concept_set: ConceptSet):
    """Per prompt, the positions the attacker controls and the initial vectors (shared across prompts for inversion)."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    c = Concept.parse(target)
    if config.attack == "inversion":
        # the new token starts at the mean embedding of the kind's other words (CCE starts from a generic word)
        others = [v for v in concept_set.values(c.kind) if v != c.value]
        ids = [i for v in others for i in pipe.tokenizer(v, add_special_tokens=False).input_ids]
        shared = table[ids].mean(0).clone().requires_grad_(True)
        positions = [word_positions(pipe, p, [c.value]) for p in prompts]
        if any(not pos for pos in positions):
            raise UserError(f"inversion replaces the word {c.value!r} of {target!r}, and some of its prompts do not contain it")
        return positions, [shared.expand(len(pos), -1) for pos in positions], [shared]
    positions = [free_positions(pipe, p, [r[k] for k in concept_set.kinds if r.get(k)], config.free_pads) for p, r in zip(prompts, rows)]
    vectors = [table[[prompt_ids(pipe, p)[i] for i in pos]].clone().requires_grad_(True) for p, pos in zip(prompts, positions)]
    return positions, vectors, vectors


def attack_target(pipe, unlearned, target: str, eval_seeds: list[int], config: AttackConfig, sampler, judge,
                  concept_set: ConceptSet, log=print) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """Attack one erased target: its record, the learned embeddings by prompt, and a before / after image grid."""
    from .methods.base import frozen, target_rows
    from .pipelines import prompt_conditions, sample

    rows = target_rows(target, concept_set)
    prompts = [r["prompt"] for r in rows]
    kind, value = Concept.parse(target).kind, Concept.parse(target).value
    start = time.perf_counter()
    n_img = len(config.image_seeds)
    with torch.no_grad():  # images of the concept: the base model's own
        x0 = sample(pipe, [p for p in prompts for _ in config.image_seeds], list(config.image_seeds) * len(prompts), sampler, decode=False)
    positions, vectors, params = _init_vectors(pipe, config, target, prompts, rows, concept_set)
    eval_prompts = [p for p in prompts for _ in eval_seeds]
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    schedule = sampler_schedule(pipe, sampler.steps, x0.device)
    with unlearned.applied(pipe, eval_prompts, sampler) as hooks, \
            EmbeddingOverride(pipe) as override, frozen(pipe.unet), frozen(pipe.text_encoder):
        opt = torch.optim.Adam(params, lr=config.lr)
        for it in range(config.iterations):
            if config.attack == "inversion":
                vectors = [params[0].expand(len(pos), -1) for pos in positions]
            for p, pos, v in zip(prompts, positions, vectors):
                override.set(prompt_ids(pipe, p), pos, v)
            pick = torch.arange(len(prompts)) * n_img + torch.randint(n_img, (len(prompts),), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = denoising_loss(pipe, hooks, schedule, x0[pick.to(x0.device)], prompt_conditions(pipe, prompts), gen)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if (it + 1) % max(1, config.iterations // 4) == 0:
                log(f"  {target} {config.attack} {it + 1}/{config.iterations}: loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
        eval_seed_list = [s for _ in prompts for s in eval_seeds]
        with torch.no_grad():
            override.enabled = False
            before = sample(pipe, eval_prompts, eval_seed_list, sampler, on_step=hooks.on_step, on_batch=hooks.on_batch)
            override.enabled = True
            after = sample(pipe, eval_prompts, eval_seed_list, sampler, on_step=hooks.on_step, on_batch=hooks.on_batch)
    erased_before = [lab.get(kind) != value for lab in judge.label(before)]
    erased_after = [lab.get(kind) != value for lab in judge.label(after)]
    k = len(eval_seeds)
    per_prompt = [{"prompt": p, "positions": pos, "UA_before": 100 * sum(erased_before[i * k:(i + 1) * k]) / k,
                   "UA_after": 100 * sum(erased_after[i * k:(i + 1) * k]) / k} for i, (p, pos) in enumerate(zip(prompts, positions))]
    record = {"UA_before": 100 * sum(erased_before) / len(erased_before), "UA_after": 100 * sum(erased_after) / len(erased_after),
              "per_prompt": per_prompt, "loss_first": losses[0], "loss_last": sum(losses[-20:]) / len(losses[-20:]),
              "seconds": time.perf_counter() - start}
    if config.attack == "inversion":  # one token for every prompt
        embeddings = {f"{target}|inversion": params[0].detach().float().cpu().clone()}
    else:
        embeddings = {f"{target}|{p}": v.detach().float().cpu().clone() for p, v in zip(prompts, vectors)}
    first = torch.arange(len(prompts)) * k  # each prompt's first evaluation seed
    return record, embeddings, torch.cat([before[first], after[first]])


def run_attack(folder: Path, targets: list[str], eval_seeds: list[int], config: AttackConfig, sampler, out: Path, pipe,
               concept_set: ConceptSet | None = None, judge=None, log=print) -> dict:
    """Attack each target of an unlearned-model folder; writes attack.json, embeddings.safetensors and a PNG per target
    into `out` (built in `out.partial`, moved into place when complete)."""
    import shutil

    from safetensors.torch import save_file

    from .evaluate import default_judge
    from .pipelines import resolve_sampler, to_uint8
    from .unlearn import load_unlearned

    if overlap := sorted(set(eval_seeds) & set(config.image_seeds)):
        raise UserError(f"evaluation seeds {overlap} are also the attack's image seeds; give disjoint --seeds and --image-seeds")
    unlearned = load_unlearned(folder, pipe)
    unlearned.check_evaluation_seeds(eval_seeds)
    if stray := [t for t in targets if t not in unlearned.targets]:
        raise UserError(f"{str(folder)!r} erases {', '.join(unlearned.targets)}, not {', '.join(map(repr, stray))}; attack what it erased")
    concept_set = concept_set or ConceptSet.minicanvas()
    judge = judge or default_judge()
    sampler = resolve_sampler(pipe, sampler)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    results = {"attack": config.attack, "config": asdict(config), "eval_seeds": list(eval_seeds), "sampler": vars(sampler),
               **unlearned.describe(), "targets": {}}
    embeddings = {}
    for target in targets:
        record, emb, grid = attack_target(pipe, unlearned, target, eval_seeds, config, sampler, judge, concept_set, log)
        results["targets"][target] = record
        embeddings.update(emb)
        _save_grid(to_uint8(grid), partial / f"{target.replace(':', '-')}.png")
        log(f"{config.attack} on {target}: UA {record['UA_before']:.1f} -> {record['UA_after']:.1f}")
    save_file(embeddings, str(partial / "embeddings.safetensors"))
    (partial / RESULT_FILE).write_text(json.dumps(results, indent=1))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return results


def _save_grid(images, path: Path) -> None:
    """Upper row before the attack, lower row after, one column per prompt."""
    import numpy as np
    from PIL import Image

    half = len(images) // 2
    grid = np.concatenate([np.concatenate(list(images[:half]), axis=1), np.concatenate(list(images[half:]), axis=1)], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


# ---------------------------------------------------------------- CLI


def _cmd_attack(args) -> None:
    from .cli_args import check_output, device_from_args, parse_seeds, sampler_from_args
    from .evaluate import _answer_set_and_judge, parse_target_spec
    from .pipelines import load_pipeline
    from .unlearn import load_unlearned

    config = AttackConfig(args.attack, args.iterations, args.lr, tuple(parse_seeds(args.image_seeds)), args.free_pads, args.seed)
    unlearned = load_unlearned(args.unlearned)
    targets = parse_target_spec(args.targets, unlearned.targets) if args.targets else unlearned.targets
    seeds = parse_seeds(args.seeds)
    out = check_output(args.out, "attack folder", folder=True)
    if (out / RESULT_FILE).exists():
        raise UserError(f"{str(out)!r} already holds an attack; choose another --out")
    device, dtype = device_from_args(args)
    concept_set, judge = _answer_set_and_judge(args, targets, seeds, device, None)
    pipe = load_pipeline(args.model, dtype, device)
    results = run_attack(Path(args.unlearned), targets, seeds, config, sampler_from_args(args), out, pipe,
                         concept_set, judge)
    for t, r in results["targets"].items():
        print(f"{t}: UA {r['UA_before']:.1f} before, {r['UA_after']:.1f} after {args.attack} ({r['seconds']:.0f} s)")
    print(f"attack folder: {out}")


def register_cli(sub) -> None:
    """Add `attack`."""
    from .cli import command_help
    from .cli_args import POSITIVE_INT, SEED, add_sampler_args

    p = sub.add_parser("attack", help=command_help("attack"))
    p.add_argument("--unlearned", required=True, help="an unlearned-model folder from `saeuron unlearn`")
    p.add_argument("--attack", required=True, help=f"one of {', '.join(ATTACKS)}")
    p.add_argument("--targets", help="the erased concepts to attack (default: all of the folder's)")
    p.add_argument("--seeds", default="300-304", help="evaluation seeds of the images judged after the attack (default 300-304)")
    p.add_argument("--image-seeds", default="400-403", help="seeds of the base model's images of the concept the attack recovers "
                                                            "(default 400-403, disjoint from --seeds)")
    p.add_argument("--iterations", type=POSITIVE_INT, default=AttackConfig.iterations)
    p.add_argument("--lr", type=float, default=AttackConfig.lr, help=f"Adam's step on the embeddings (default {AttackConfig.lr})")
    p.add_argument("--free-pads", type=int, default=AttackConfig.free_pads, help="unlearndiffatk: padding slots the attacker also "
                                                                                "controls (default 5, the paper's k)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the attack's draws (images, timesteps, noise)")
    p.add_argument("--judge", help="minicanvas (default on minicanvas) or clip:MODEL")
    p.add_argument("--judge-template", action="append", metavar="KIND=TEMPLATE", help="CLIP prompt template of a kind, with {value}")
    p.add_argument("--prompts", help="labelled prompt file (.csv / .jsonl) with the target's prompts (default: minicanvas's grid)")
    p.add_argument("--out", required=True, help="the attack folder to write (attack.json, embeddings.safetensors, PNGs)")
    add_sampler_args(p)
    p.set_defaults(func=_cmd_attack)
