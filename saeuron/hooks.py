"""Hookpoints of the UNet: list them, capture their activations per step and CFG branch, intervene on them.

A hookpoint is a module path inside `pipe.unet` (e.g. `up_blocks.1.attentions.1`). Captured
activations are token vectors `acts_btd` (batch, tokens = h*w, width). The denoising loop of
`pipelines.sample` runs the UNet on the CFG batch `[uncond; cond]`; hooks split it in two.
Every hook is removed when its `with` block exits, even on an exception.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from einops import rearrange

from .errors import UserError
from .pipelines import CFG_BRANCHES, MINICANVAS, _unet_conditions, default_size, load_pipeline

BRANCH_CHOICES = ("cond", "uncond", "both")
CAPTURE_CHOICES = ("output", "residual")


@dataclass(frozen=True)
class Hookpoint:
    """A module of the UNet and the token vectors it emits at the default resolution."""

    path: str
    tokens: int
    width: int
    kind: str  # the module's class name


# ---------------------------------------------------------------- tensors


def _main_tensor(output):
    """The activation tensor of a module output (tensor, diffusers output object or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _replace_main_tensor(output, new: torch.Tensor):
    """The same kind of module output with its activation tensor replaced."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(getattr(output, "sample", None), torch.Tensor):
        output.sample = new  # BaseOutput keeps attribute and mapping views in sync
        return output
    return type(output)([new, *output[1:]]) if isinstance(output, tuple) else [new, *output[1:]]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A 4-d feature map b d h w (or an already b t d tensor) as token vectors b (h w) d."""
    if x.dim() == 4:
        return rearrange(x, "b d h w -> b (h w) d")
    if x.dim() == 3:
        return x
    raise UserError(f"cannot read a tensor of shape {tuple(x.shape)} as token vectors; hook a block that emits b x d x h x w or b x t x d")


def from_tokens(acts_btd: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Token vectors back to the layout of `like`."""
    if like.dim() == 4:
        return rearrange(acts_btd, "b (h w) d -> b d h w", h=like.shape[2], w=like.shape[3])
    return acts_btd


def _shape_tokens(x: torch.Tensor) -> tuple[int, int] | None:
    if x.dim() == 4:
        return x.shape[2] * x.shape[3], x.shape[1]
    if x.dim() == 3:
        return x.shape[1], x.shape[2]
    return None


# ---------------------------------------------------------------- listing


def _strip(path: str) -> str:
    return path[len("unet.") :] if path.startswith("unet.") else path


@torch.no_grad()
def list_hookpoints(pipe, all_modules: bool = False) -> list[Hookpoint]:
    """The UNet's cross-attention transformer blocks (or, with all_modules, every module) with their token shapes."""
    cache = pipe.__dict__.setdefault("_saeuron_hookpoints", {})
    if all_modules in cache:
        return list(cache[all_modules])
    unet = pipe.unet
    names = {m: n for n, m in unet.named_modules() if n}
    wanted = names if all_modules else {m: n for m, n in names.items() if type(m).__name__ == "Transformer2DModel"}
    found: dict[str, Hookpoint] = {}
    handles = []

    def make_hook(name):
        def hook(module, args, output):
            x = _main_tensor(output)
            shape = _shape_tokens(x) if x is not None else None
            if shape is not None and name not in found:
                found[name] = Hookpoint(name, int(shape[0]), int(shape[1]), type(module).__name__)

        return hook

    h, w = default_size(pipe)
    cond = _unet_conditions(pipe, [""], h, w)
    # batch 1 of the conditional half, text embeddings zeroed: only shapes matter
    kwargs = {"encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"][1:])}
    if "added_cond_kwargs" in cond:
        kwargs["added_cond_kwargs"] = {k: v[1:] for k, v in cond["added_cond_kwargs"].items()}
    from .pipelines import initial_latents

    latents = initial_latents(pipe, [0], h, w)
    try:
        for module, name in wanted.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        unet(latents, torch.tensor(500, device=unet.device), **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    order = [n for n in names.values() if n in found]
    result = [found[n] for n in order]
    cache[all_modules] = result
    return list(result)


def get_hookpoint(pipe, path: str) -> Hookpoint:
    """The Hookpoint of a module path; UserError naming the valid ones if it emits no token vectors."""
    resolve_module(pipe, path)
    path = _strip(path)
    for hp in list_hookpoints(pipe, all_modules=path not in {h.path for h in list_hookpoints(pipe)}):
        if hp.path == path:
            return hp
    raise UserError(f"module {path!r} emits no token vectors (b x d x h x w or b x t x d); valid hookpoints: {_valid_list(pipe)}")


def _valid_list(pipe) -> str:
    return ", ".join(h.path for h in list_hookpoints(pipe))


def resolve_module(pipe, path: str) -> torch.nn.Module:
    """The UNet module at `path`; UserError listing the valid hookpoints if there is none."""
    modules = dict(pipe.unet.named_modules())
    name = _strip(path)
    if not name or name not in modules:
        raise UserError(f"unknown hookpoint {path!r}; valid hookpoints: {_valid_list(pipe)} (see `saeuron hookpoints --all` for every module)")
    return modules[name]


# ---------------------------------------------------------------- step tracking


class _StepTracker:
    """Knows the current (step_index, timestep): from `on_step` if `sample` calls it, else from the UNet's timestep."""

    def __init__(self):
        self.step: int | None = None
        self.timestep: int | None = None
        self._fresh = False
        self._last_t: int | None = None

    def on_step(self, step_index: int, timestep: int) -> None:
        self.step, self.timestep, self._fresh = int(step_index), int(timestep), True

    def unet_pre_hook(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = int(t.flatten()[0]) if isinstance(t, torch.Tensor) else (int(t) if t is not None else None)
        if self._fresh:
            self._fresh = False
        elif t is not None:  # nobody called on_step: a new run starts when the timestep stops decreasing
            self.step = 0 if self._last_t is None or t >= self._last_t else (self.step or 0) + 1
            self.timestep = t
        self._last_t = t


# ---------------------------------------------------------------- capture


class _StepHooks:
    """Hooks that know the denoising step, registered on `with` entry and always removed on exit."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tracker = _StepTracker()
        self._handles: list = []

    def on_step(self, step_index: int, timestep: int) -> None:
        """Tell the hooks which denoising step the next UNet call is."""
        self.tracker.on_step(step_index, timestep)

    def _register(self) -> list:
        """Register this object's module hooks; return their handles."""
        raise NotImplementedError

    def __enter__(self):
        try:
            self._handles.append(self.pipe.unet.register_forward_pre_hook(self.tracker.unet_pre_hook, with_kwargs=True))
            self._handles.extend(self._register())
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()


Sink = Callable[[str, int, int, str, torch.Tensor], None]


class Capture(_StepHooks):
    """Context manager recording hookpoint activations; pass `.on_step` to `pipelines.sample`."""

    def __init__(
        self,
        pipe,
        hookpoints: Sequence[str],
        sink: Sink,
        branch: str = "cond",
        steps: Iterable[int] | Callable[[int, int], bool] | None = None,
        capture: str = "output",
    ):
        if branch not in BRANCH_CHOICES:
            raise UserError(f"unknown CFG branch {branch!r}; valid: {', '.join(BRANCH_CHOICES)}")
        if capture not in CAPTURE_CHOICES:
            raise UserError(f"unknown capture {capture!r}; valid: {', '.join(CAPTURE_CHOICES)}")
        if isinstance(hookpoints, str):
            hookpoints = [hookpoints]
        if not hookpoints:
            raise UserError(f"no hookpoints given; valid hookpoints: {_valid_list(pipe)}")
        super().__init__(pipe)
        self.modules = {_strip(p): resolve_module(pipe, p) for p in hookpoints}
        self.sink = sink
        self.branches = CFG_BRANCHES if branch == "both" else (branch,)
        if steps is None or callable(steps):
            self._want = steps
        else:
            wanted = {int(s) for s in steps}
            self._want = lambda i, t: i in wanted
        self.capture = capture

    def _active(self) -> bool:
        tr = self.tracker
        return tr.step is not None and (self._want is None or self._want(tr.step, tr.timestep))

    def _make_hook(self, path: str):
        def hook(module, args, kwargs, output):
            if not self._active():
                return None
            out = _main_tensor(output)
            if out is None:
                return None
            acts = out
            if self.capture == "residual":
                acts = out - _block_input(args, kwargs, out, path)
            acts_btd = to_tokens(acts.detach())
            halves = acts_btd.chunk(2) if acts_btd.shape[0] % 2 == 0 else (acts_btd, acts_btd)
            for name, half in zip(CFG_BRANCHES, halves):
                if name in self.branches:
                    self.sink(path, self.tracker.step, self.tracker.timestep, name, half)
            return None

        return hook

    def _register(self) -> list:
        return [module.register_forward_hook(self._make_hook(path), with_kwargs=True) for path, module in self.modules.items()]


def _block_input(args, kwargs, out: torch.Tensor, path: str) -> torch.Tensor:
    """A hooked block's input, for capture='residual' (output - input): it must have the output's shape."""
    inp = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(inp, torch.Tensor) or inp.shape != out.shape:
        raise UserError(f"capture='residual' needs a block whose input and output have the same shape; {path!r} does not")
    return inp


def capture(pipe, hookpoints: Sequence[str], sink: Sink, branch: str = "cond", steps=None, capture: str = "output") -> Capture:
    """Record activations: `sink(hookpoint, step_index, timestep, branch, acts_btd)` per hookpoint, step and branch."""
    return Capture(pipe, hookpoints, sink, branch=branch, steps=steps, capture=capture)


# ---------------------------------------------------------------- intervention


class Intervention(_StepHooks):
    """Context manager replacing a block's signal on both CFG halves with `fn(acts_btd, step_index, timestep)`.

    With capture='output' the signal is the block's output; with 'residual' it is output - input
    (what a residual-trained SAE saw), and the block returns output + fn(residual) - residual.
    """

    def __init__(self, pipe, hookpoint: str, fn: Callable[[torch.Tensor, int | None, int | None], torch.Tensor], capture: str = "output"):
        if capture not in CAPTURE_CHOICES:
            raise UserError(f"unknown capture {capture!r}; valid: {', '.join(CAPTURE_CHOICES)}")
        super().__init__(pipe)
        self.path = _strip(hookpoint)
        self.module = resolve_module(pipe, hookpoint)
        self.fn = fn
        self.capture = capture

    def _hook(self, module, args, kwargs, output):
        out = _main_tensor(output)
        if out is None:
            return None
        base = _block_input(args, kwargs, out, self.path) if self.capture == "residual" else None
        acts_btd = to_tokens(out if base is None else out - base)
        new = self.fn(acts_btd, self.tracker.step, self.tracker.timestep)
        if not isinstance(new, torch.Tensor) or new.shape != acts_btd.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise UserError(f"intervention on {self.path!r} must return a tensor of shape {tuple(acts_btd.shape)}, got {got}")
        if base is not None:  # output + (new residual - residual): exactly the output when fn changes nothing
            return _replace_main_tensor(output, out + from_tokens((new - acts_btd).to(out.dtype), out))
        return _replace_main_tensor(output, from_tokens(new.to(out.dtype), out))

    def _register(self) -> list:
        return [self.module.register_forward_hook(self._hook, with_kwargs=True)]


def intervene(pipe, hookpoint: str, fn: Callable[[torch.Tensor, int | None, int | None], torch.Tensor], capture: str = "output") -> Intervention:
    """Within the `with` block, the hookpoint's signal becomes `fn(acts_btd, step_index, timestep)` (both CFG halves)."""
    return Intervention(pipe, hookpoint, fn, capture=capture)


# ---------------------------------------------------------------- CLI


def _cmd_hookpoints(args) -> None:
    pipe = load_pipeline(args.model)
    hps = list_hookpoints(pipe, all_modules=args.all)
    if args.json:
        print(json.dumps([asdict(h) for h in hps], indent=1))
        return
    for h in hps:
        print(f"{h.path}\t{h.tokens} x {h.width}\t{h.kind}")


def register_cli(sub) -> None:
    """Add `hookpoints`."""
    from .cli import command_help

    p = sub.add_parser("hookpoints", help=command_help("hookpoints"))
    p.add_argument("--model", default=MINICANVAS, help="minicanvas (default), a diffusers folder or a hub id")
    p.add_argument("--all", action="store_true", help="every module that emits token vectors, not only the transformer blocks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_hookpoints)
