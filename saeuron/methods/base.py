"""What every unlearning method shares: the interface, the prompts it trains on, trajectory banks, training loops.

A method is a class with a `name`, its `defaults` (hyperparameters, each with the paper's value
and why minicanvas uses another where it does), `fit` (write the unlearned weights into a
folder) and `applied` (a context manager under which the base pipeline samples as the unlearned
model). `saeuron.unlearn` writes `unlearn.json` around `fit` and reads it back for `applied`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..concept_set import Concept, ConceptSet


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: the value used, the paper's, why they differ (empty: they do not), and for a named choice
    the values it takes."""

    value: float | int | str
    paper: float | int | str | None = None
    why: str = ""
    choices: tuple[str, ...] = ()


@dataclass
class FitContext:
    """Everything `Method.fit` needs: the base pipeline, the targets, the prompts they live in, the resolved settings."""

    pipe: object
    targets: list[str]
    concept_set: ConceptSet
    params: dict
    seed: int
    out: Path
    sae: str | list[str] | None = None  # SAeUron: the SAE folder(s)
    site_settings: list[dict] | None = None  # SAeUron: per SAE folder, {target: setting} overriding given / tuned values
    log: Callable[[str], None] = print


@dataclass
class SampleHooks:
    """Callbacks an applied method hands to `pipelines.sample` (None: not needed)."""

    on_step: Callable[[int, int], None] | None = None
    on_batch: Callable[[int], None] | None = None

    @staticmethod
    def together(hooks: list["SampleHooks"]) -> "SampleHooks":
        """One set of callbacks calling those of every one of `hooks`, in order (a chain of folders applied at once)."""
        def joined(name: str):
            calls = [f for h in hooks if (f := getattr(h, name)) is not None]

            def call_all(*args) -> None:
                for f in calls:
                    f(*args)
            return call_all if calls else None

        return hooks[0] if len(hooks) == 1 else SampleHooks(on_step=joined("on_step"), on_batch=joined("on_batch"))


class Method:
    """The interface: subclasses set `name`, `summary`, `defaults` and implement `fit` and `applied`."""

    name: str = ""
    summary: str = ""
    defaults: dict[str, Hyper] = {}
    # sequential unlearning (`unlearn --after`): "chain" fits on the previous folder's model (edited weights),
    # "compose" fits on the base model and is applied beside the previous folders (SPM, UnGuide), None refuses
    sequential: str | None = None

    def fit(self, ctx: FitContext) -> dict:
        """Unlearn `ctx.targets` and write the method's files into `ctx.out`; return what unlearn.json should add."""
        raise NotImplementedError

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        """Within the block, `pipelines.sample(pipe, prompts, seeds, config, ...)` with the yielded hooks generates as the
        unlearned model."""
        raise NotImplementedError
        yield

    def check_evaluation_seeds(self, folder: Path, record: dict, seeds: list[int]) -> None:
        """Refuse evaluation seeds that a choice stored in the folder looked at (default: none do)."""

    def target_params(self, record: dict, target: str) -> dict:
        """The settings that erase `target`, as results.json and the report show them (default: the folder's settings)."""
        return dict(record["params"])


# ---------------------------------------------------------------- prompts


def target_rows(target: str, concept_set: ConceptSet) -> list[dict]:
    """The prompts labelled with the target concept."""
    return [r for r in concept_set.rows if target in concept_set.labels(r)]


def anchor_value(target: str, concept_set: ConceptSet) -> str:
    """The concept of the target's kind that stands in for it where a method needs another one (UCE's guide, CA's
    anchor): the next value of the kind, in the concept set's order (UnlearnCanvas maps every object to one fixed other
    object, "An Elephant image"; minicanvas has no spare object)."""
    c = Concept.parse(target)
    values = concept_set.values(c.kind)
    return values[(values.index(c.value) + 1) % len(values)] if len(values) > 1 else ""


def guide_row(row: dict, target: str, concept_set: ConceptSet, leave_out: bool = True) -> dict:
    """The prompt a method maps a target prompt to: the same labels with the target's kind left out if the set has such a
    prompt and `leave_out` (minicanvas: "a star in neon style" -> "a star" for style:neon), else with the kind's anchor
    value ("a star in neon style" -> "a square in neon style" for object:star, "a star in noir style" for style:neon
    without `leave_out`), else the empty prompt."""
    kind = Concept.parse(target).kind
    by_labels = {tuple(r.get(k, "") for k in concept_set.kinds): r for r in concept_set.rows}
    for value in ("", anchor_value(target, concept_set))[0 if leave_out else 1:]:
        key = tuple(value if k == kind else row.get(k, "") for k in concept_set.kinds)
        if key in by_labels and (value or any(key)):
            return by_labels[key]
    return {"prompt": "", **{k: "" for k in concept_set.kinds}}


def training_prompts(targets: list[str], concept_set: ConceptSet) -> list[tuple[str, str]]:
    """(target prompt, guide prompt) pairs over every prompt of every target."""
    return [(r["prompt"], guide_row(r, t, concept_set)["prompt"]) for t in targets for r in target_rows(t, concept_set)]


# ---------------------------------------------------------------- tensors and conditions


def index_conditions(cond: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of the UNet's keyword arguments (nested dicts of batch-first tensors)."""
    return {k: index_conditions(v, idx) if isinstance(v, dict) else v[idx.to(v.device)] for k, v in cond.items()}


def unet_out(unet, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """The UNet's prediction (noise or velocity, whatever the model was trained on) for a batch."""
    return unet(x, t, **cond).sample


@dataclass
class TrajectoryBank:
    """x_t along sampled trajectories: latents, their timesteps and the index of the prompt that made them."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt_index: torch.Tensor

    def draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = torch.randint(len(self.latents), (n,), generator=gen)
        return self.latents[i], self.timesteps[i], self.prompt_index[i]


def trajectory_bank(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> TrajectoryBank:
    """Run the sampler on every (prompt, seed) pair with guidance `guidance` and keep x_t before every step
    (ESD's and SPM's x_t, drawn here from the frozen base model as ESD's current code does)."""
    from ..pipelines import SamplerConfig, sample

    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    latents, timesteps, index = [], [], []
    batch_index: list[int] = []

    def keep(step: int, t: int, x: torch.Tensor) -> None:
        latents.append(x.detach().clone())
        timesteps.append(torch.full((len(x),), t, dtype=torch.long))
        index.append(torch.tensor(batch_index[: len(x)]))

    config = SamplerConfig(steps=steps, cfg=guidance, batch_size=64)

    def on_batch(start: int) -> None:
        batch_index[:] = [pairs[j][0] for j in range(start, min(start + config.batch_size, len(pairs)))]

    sample(pipe, [prompts[i] for i, _ in pairs], [s for _, s in pairs], config, on_batch=on_batch, on_latents=keep, decode=False)
    device = pipe.unet.device
    return TrajectoryBank(torch.cat(latents), torch.cat(timesteps).to(device), torch.cat(index).to(device))


@dataclass
class EraseInputs:
    """What ESD's erase term needs (ESD, SPM): the targets' prompts, x_t of the base model on them, their UNet
    conditions and the empty prompt's."""

    prompts: list[str]
    bank: TrajectoryBank
    cond: dict
    empty: dict


@torch.no_grad()
def erase_inputs(ctx: "FitContext") -> EraseInputs:
    """The erase inputs of a fit: a trajectory bank of `bank_seeds` samples per target prompt at `start_guidance`."""
    from ..pipelines import prompt_conditions

    p = ctx.params
    prompts = list(dict.fromkeys(t for t, _ in training_prompts(ctx.targets, ctx.concept_set)))
    bank = trajectory_bank(ctx.pipe, prompts, [ctx.seed * 1000 + i for i in range(int(p["bank_seeds"]))], int(p["steps"]),
                           float(p["start_guidance"]))
    return EraseInputs(prompts, bank, prompt_conditions(ctx.pipe, prompts), prompt_conditions(ctx.pipe, [""]))


def parameter_group(unet, group: str) -> dict[str, torch.nn.Parameter]:
    """The UNet parameters a method trains: 'xattn' every cross-attention (attn2) parameter (ESD-x); 'xattn-kv' the
    cross-attention key and value projections (CA, UCE); 'noxattn' everything but cross-attention, the time embedding
    and the output layer (ESD-u, as the authors' compvis code); 'full' every parameter (Selective Amnesia)."""
    def wanted(name: str) -> bool:
        if group == "xattn":
            return ".attn2." in name
        if group == "xattn-kv":
            return ".attn2.to_k." in name or ".attn2.to_v." in name
        if group == "full":
            return True
        if group == "noxattn":
            return ".attn2." not in name and not name.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))
        raise ValueError(f"unknown parameter group {group!r}")

    return {n: p for n, p in unet.named_parameters() if wanted(n)}


@contextlib.contextmanager
def gradients(module: torch.nn.Module, on: bool) -> Iterator[None]:
    """Every parameter of the module with (on) or without gradients in the block, as before after it."""
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    module.requires_grad_(on)
    try:
        yield
    finally:
        for n, p in module.named_parameters():
            p.requires_grad_(flags[n])


def frozen(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Every parameter of the module without gradients in the block, as before after it."""
    return gradients(module, False)


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict at x_t = add_noise(x0, noise, t): the velocity for a v-prediction model
    (minicanvas), else the noise (Stable Diffusion)."""
    return scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise


def train_loop(params: list[torch.nn.Parameter], loss_fn: Callable[[int], torch.Tensor], iterations: int, lr: float,
               log: Callable[[str], None] = print, optimizer: str = "adam") -> list[float]:
    """Adam (or AdamW) on `params` for `iterations` steps of `loss_fn(step)`; the losses, for the record."""
    opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(params, lr=lr)
    losses = []
    for step in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, iterations // 5) == 0 or step + 1 == iterations:
            log(f"  step {step + 1}/{iterations}: loss {sum(losses[-20:]) / len(losses[-20:]):.5f}")
    return losses


def fine_tune(unet, trained: dict[str, torch.nn.Parameter], loss_fn: Callable[[int], torch.Tensor], params: dict, out: Path,
              log: Callable[[str], None], originals: dict[str, torch.Tensor] | None = None) -> dict:
    """Train only `trained` on `loss_fn`, save those tensors to `out`, and put the base weights back (the pipeline stays
    the base model; `originals`: the caller's copy of them, if it keeps one); the record for unlearn.json."""
    originals = originals if originals is not None else {k: v.detach().clone() for k, v in trained.items()}
    with frozen(unet):
        for prm in trained.values():
            prm.requires_grad_(True)
        losses = train_loop(list(trained.values()), loss_fn, int(params["iterations"]), float(params["lr"]), log)
    record = save_edited(unet, list(trained), out)
    with torch.no_grad():
        for k, v in originals.items():
            trained[k].copy_(v)
    return {**record, "final_loss": sum(losses[-20:]) / len(losses[-20:])}


# ---------------------------------------------------------------- edited weights


EDITED_FILE = "edited_unet.safetensors"


def save_edited(unet, names: list[str], out: Path) -> dict:
    """Write the named UNet tensors (only those) as safetensors; their count and size for unlearn.json."""
    state = dict(unet.named_parameters())
    return save_tensors({n: state[n] for n in names}, out)


def save_tensors(tensors: dict[str, torch.Tensor], out: Path) -> dict:
    """Write edited UNet tensors, by parameter name, as float32 safetensors; their count and size for unlearn.json."""
    from safetensors.torch import save_file

    tensors = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in tensors.items()}
    save_file(tensors, str(out / EDITED_FILE))
    return {"weights": EDITED_FILE, "edited_tensors": len(tensors), "edited_parameters": sum(t.numel() for t in tensors.values())}


@contextlib.contextmanager
def swapped_parameters(unet, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """The UNet with these parameters replaced in the block, restored after it."""
    state = dict(unet.named_parameters())
    unknown = [n for n in tensors if n not in state]
    if unknown:
        from ..errors import UserError

        raise UserError(f"the edited weights name tensors this UNet does not have ({', '.join(unknown[:3])}); they were made for another model")
    saved = {n: state[n].data for n in tensors}
    try:
        for n, t in tensors.items():
            state[n].data = t.to(state[n].device, state[n].dtype)
        yield
    finally:
        for n, data in saved.items():
            state[n].data = data


class EditedWeightsMethod(Method):
    """A method whose result is a set of edited UNet tensors (ESD, UCE, CA): applying it swaps them in."""

    sequential = "chain"

    @contextlib.contextmanager
    def applied(self, pipe, folder: Path, record: dict, prompts: list[str], config) -> Iterator[SampleHooks]:
        from safetensors.torch import load_file

        with swapped_parameters(pipe.unet, load_file(str(folder / record["weights"]))):
            yield SampleHooks()


@dataclass
class Stopwatch:
    """Wall time and peak memory of a fit: CUDA's peak allocation on a GPU, else the process's peak resident memory."""

    device: torch.device
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def record(self) -> dict:
        import resource

        if self.device.type == "cuda":
            peak, what = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda max allocated"
        else:
            peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
        return {"wall_time_s": round(time.perf_counter() - self.start, 2), "peak_memory_mb": round(peak, 1), "peak_memory_of": what}


# ---------------------------------------------------------------- peft adapters (SPM, UnGuide)


ADAPTER_FILE = "adapter_model.safetensors"


@contextlib.contextmanager
def trainable_adapter(unet, config, name: str, seed: int) -> Iterator[list[torch.nn.Parameter]]:
    """Within the block the UNet carries a new peft adapter (initialised from `seed`) whose parameters are the only
    ones with gradients; after it, the plain layers (`unload_lora`: `delete_adapters` would leave peft's wrappers,
    renaming parameters)."""
    torch.manual_seed(seed)  # peft's initialisation of the adapters' down projections
    unet.add_adapter(config, adapter_name=name)
    try:
        with frozen(unet):
            trained = [p for n, p in unet.named_parameters() if "lora_" in n and f".{name}." in n]
            for p in trained:
                p.requires_grad_(True)
            yield trained
    finally:
        unet.unload_lora()


def save_adapter(unet, config, name: str, out: Path) -> dict:
    """The adapter in peft's format (adapter_model.safetensors, adapter_config.json); the record's part."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(unet, adapter_name=name)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(out / ADAPTER_FILE))
    config.save_pretrained(str(out))
    return {"weights": ADAPTER_FILE, "adapted_layers": len(config.target_modules), "adapter_parameters": sum(v.numel() for v in state.values())}


@contextlib.contextmanager
def loaded_adapter(unet, folder: Path, record: dict, name: str) -> Iterator[str]:
    """Within the block the UNet carries the folder's adapter, active beside any adapter already loaded (each under its
    own name: `name`, else `name_2`, ...; the name is yielded); after it, the adapters it found, or the plain layers."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = list(getattr(unet, "peft_config", {}) or {})
    name = next(n for n in (name, *(f"{name}_{i}" for i in range(2, len(loaded) + 3))) if n not in loaded)
    with warnings.catch_warnings():  # peft warns that the model will carry several adapters: here, that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(LoraConfig.from_pretrained(str(folder)), adapter_name=name)
    try:
        set_peft_model_state_dict(unet, load_file(str(folder / record["weights"])), adapter_name=name)
        if loaded:
            unet.set_adapter(loaded + [name])
        yield name
    finally:
        if loaded:
            unet.delete_adapters(name)
            unet.set_adapter(loaded)
        else:
            unet.unload_lora()
