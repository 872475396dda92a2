"""SAE training through sae-lens' `SAETrainer`, streaming (batch, width) rows from the activation store.

The output folder holds the SAE in sae-lens format (`cfg.json`, `sae_weights.safetensors`;
`sae_lens.SAE.load_from_disk(out)` opens it), `train_config.json` and `metrics.json`.
While training, `out/checkpoints/<tokens>/` holds the latest sae-lens checkpoint (weights,
optimizer, scheduler and activation scaler) that `--resume` continues from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .cache import count_rows, iter_batches, open_store, prompts_with_rows
from .errors import UserError

ARCHS = ("batchtopk", "topk", "jumprelu", "standard")
CHECKPOINT_DIR = "checkpoints"
RUN_STATE_FILE = "saeuron_state.json"  # beside each sae-lens checkpoint: wall time and data seed
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
INIT_BATCHES = 4  # batches that set the input scale and b_dec before the first step
RNG_FILE = "rng_state.pt"
# SAeUron: a latent is dead after 10M tokens without firing (AuxK revives it)
DEAD_AFTER_TOKENS = 10_000_000


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one SAE training run; written to `out/train_config.json`."""

    out: str
    hookpoint: str
    cache: str | None = None
    # None: taken from the default set (`defaults`), which the hookpoint's width chooses (choose_default_set)
    arch: str | None = None
    k: int | None = None
    expansion: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    tokens: int | None = None  # None: one pass over the training rows
    timesteps: tuple[int, ...] | None = None
    aux_loss_coefficient: float | None = None  # AuxK weight; None: the default set's
    sparsity_coefficient: float = 1.0  # l1 (standard) or l0 (jumprelu) weight
    val_fraction: float = 0.1  # fraction of prompts held out for validation
    val_tokens: int = 16384  # at most this many validation rows are scored
    n_checkpoints: int = 10
    warmup_steps: int | None = None  # None: min(1000, 5% of the steps)
    seed: int = 0  # initial weights, data order, sampled validation rows
    buffer_rows: int = 262_144  # shuffle buffer of the store reader
    d_in: int | None = None  # filled in from the data
    capture: str = "output"  # the signal the store recorded (block output or output - input); ablation edits the same
    device: str = "auto"  # where the SAE trains (auto: CUDA when present); a resumed run may move
    dtype: str = "float32"  # float32, or float16 / bfloat16: sae-lens mixed precision (bfloat16 autocast), weights stay float32
    defaults: str = "auto"  # default set: auto (chosen by width), or one of DEFAULT_SETS; resolved to the name used
    default_set: dict | None = None  # filled in: the set's name, why it was chosen, its values at this width, the fields given

    def to_json(self) -> str:
        """The config as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Inverse of to_json (unknown keys are ignored)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        if data.get("timesteps") is not None:
            data["timesteps"] = tuple(data["timesteps"])
        return cls(**data)


def default_k(width: int) -> int:
    """SAeUron's k=32 at width 1280, scaled to the width: width/40, at least 4, at most width/8."""
    return int(min(max(4, round(width / 40)), max(1, width // 8)))


K_RULES = {  # how a default set's k follows the width
    "saeuron": default_k,
    "width/8": lambda width: max(1, width // 8),  # 8 at minicanvas's 64, 12 at its 96
    "width/8, at most 8": lambda width: min(8, max(1, width // 8)),
}


@dataclass(frozen=True)
class DefaultSet:
    """A named set of SAE training defaults; any field a user gives overrides it."""

    name: str
    arch: str
    expansion: int
    lr: float
    aux_loss_coefficient: float
    batch_size: int
    k_rule: str  # a key of K_RULES
    about: str

    def values(self, width: int) -> dict[str, Any]:
        """The set's training values at `width`."""
        k = int(K_RULES[self.k_rule](width))
        return {"arch": self.arch, "k": k, "expansion": self.expansion, "lr": self.lr, "aux_loss_coefficient": self.aux_loss_coefficient,
                "batch_size": self.batch_size}


# Stable Diffusion's blocks are 320, 640 and 1280 wide; minicanvas's 64 and 96.
SD_MIN_WIDTH = 320
DEFAULT_SETS = {
    # benchmarks/RESULTS.md, "Train defaults by width": at 1M tokens on minicanvas, 256 latents (expansion 4) in
    # batches of 1024 reach FVU <= 0.10 with <= 10% dead; SAeUron's recipe leaves 84% dead there
    "small": DefaultSet("small", "topk", 4, 1e-2, 1.0, 1024, "width/8",
                        f"widths below {SD_MIN_WIDTH} and minicanvas (measured on minicanvas, 1M tokens)"),
    "saeuron": DefaultSet("saeuron", "batchtopk", 16, 4e-4, 1 / 32, 4096, "saeuron",
                          f"SAeUron's Stable Diffusion recipe, for widths of {SD_MIN_WIDTH} and more"),
    # the demo's SAEs (benchmarks/RESULTS.md, "SAE quality", 1.5-2M tokens): its fixed ablation settings were chosen on them
    "demo": DefaultSet("demo", "topk", 16, 1e-2, 1.0, 4096, "width/8, at most 8",
                       "the demo's SAEs on minicanvas (1.5-2M tokens, 16x latents)"),
}
SET_FIELDS = ("arch", "k", "expansion", "lr", "aux_loss_coefficient", "batch_size")


def choose_default_set(width: int, model: str | None = None) -> tuple[DefaultSet, str]:
    """The default set for a hookpoint of `width` (in a store of `model`), and why it was chosen."""
    from .cache.store import MINICANVAS

    if model == MINICANVAS:
        return DEFAULT_SETS["small"], f"model {MINICANVAS}"
    if width < SD_MIN_WIDTH:
        return DEFAULT_SETS["small"], f"width {width} < {SD_MIN_WIDTH}"
    return DEFAULT_SETS["saeuron"], f"width {width} >= {SD_MIN_WIDTH}"


# ---------------------------------------------------------------- data


def validation_prompt_mask(prompt_ids: np.ndarray, val_fraction: float) -> np.ndarray:
    """True for prompts held out for validation, decided by a hash of the prompt index alone.

    The hash (Knuth's multiplicative, mod 2**32) spreads consecutive indices evenly, so the
    split is stable whatever else the store holds; with two or more prompts at least one is
    on each side.
    """
    ids = np.asarray(prompt_ids, dtype=np.int64)
    unique = np.unique(ids)
    u = ((unique.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)).astype(np.float64) / 2**32
    val_unique = u < val_fraction
    if len(unique) >= 2 and val_fraction > 0:
        if not val_unique.any():
            val_unique[np.argmin(u)] = True
        if val_unique.all():
            val_unique[np.argmax(u)] = False
    return np.isin(ids, unique[val_unique])


def tensor_batches(acts: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled (batch_size, width) float32 batches from an in-memory (rows, width) tensor."""
    if acts.ndim != 2 or len(acts) == 0:
        raise UserError(f"activations must be a non-empty (rows, width) tensor, got shape {tuple(acts.shape)}")
    gen = torch.Generator().manual_seed(seed)
    carry = torch.zeros(0, dtype=torch.long)
    while True:
        # index lazily, one batch at a time, so no shuffled copy of the data is made
        order = torch.cat([carry, torch.randperm(len(acts), generator=gen)])
        n_full = len(order) // batch_size
        for i in range(n_full):
            yield acts[order[i * batch_size:(i + 1) * batch_size]].float()
        carry = order[n_full * batch_size:]


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_sae(sae, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction and sparsity of `sae` on held-out rows: FVU, explained variance, L0, dead fraction."""
    acts = acts.float()
    mean = acts.mean(0)
    err = total = l0 = 0.0
    fired = None
    for i in range(0, len(acts), batch_size):
        x = acts[i:i + batch_size].to(sae.W_dec.device, sae.W_dec.dtype)
        z = sae.encode(x)
        x_hat = sae.decode(z)
        err += (x_hat.float() - x.float()).pow(2).sum().item()
        total += (x.float() - mean.to(x.device)).pow(2).sum().item()
        active = z != 0
        l0 += active.sum().item()
        f = active.any(0)
        fired = f if fired is None else fired | f
    fvu = err / max(total, 1e-12)
    return {
        "val_fvu": fvu,
        "val_explained_variance": 1.0 - fvu,
        "val_mse": err / (len(acts) * acts.shape[1]),
        "val_l0": l0 / len(acts),
        "val_dead_fraction": 1.0 - fired.float().mean().item(),
        "val_tokens": len(acts),
    }


# ---------------------------------------------------------------- training


def _training_sae_config(cfg: TrainConfig, hook_name: str):
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    d_in, d_sae = cfg.d_in, cfg.d_in * cfg.expansion
    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device=cfg.device)
    if cfg.arch == "topk":
        sae_cfg = TopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient, **common)
    elif cfg.arch == "batchtopk":
        sae_cfg = BatchTopKTrainingSAEConfig(k=float(cfg.k), aux_loss_coefficient=cfg.aux_loss_coefficient, **common)
    elif cfg.arch == "jumprelu":
        # the quadratic L0 loss steers toward k active latents, so --k means the same for every arch
        sae_cfg = JumpReLUTrainingSAEConfig(jumprelu_sparsity_loss_mode="quadratic", target_l0=float(cfg.k), l0_coefficient=cfg.sparsity_coefficient, **common)
    else:
        sae_cfg = StandardTrainingSAEConfig(l1_coefficient=cfg.sparsity_coefficient, **common)
    sae_cfg.metadata.hook_name = hook_name
    return sae_cfg


def _latest_checkpoint(out: Path) -> Path | None:
    root = out / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / RUN_STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name)) if done else None


def resolve_defaults(cfg: TrainConfig, d_in: int, model: str | None = None) -> TrainConfig:
    """Fill every field left None from the default set (chosen by `d_in` and `model` when `cfg.defaults` is auto)
    and record the set in `cfg.default_set`; a config resolved before (a resumed run) is returned as it is."""
    if cfg.default_set is not None:
        return cfg
    if cfg.defaults == "auto":
        chosen, reason = choose_default_set(d_in, model)
    elif cfg.defaults in DEFAULT_SETS:
        chosen, reason = DEFAULT_SETS[cfg.defaults], "given"
    else:
        raise UserError(f"unknown default set {cfg.defaults!r}; choose auto or one of {', '.join(DEFAULT_SETS)}")
    values = chosen.values(d_in)
    given = {f: getattr(cfg, f) for f in SET_FIELDS if getattr(cfg, f) is not None}
    record = {"name": chosen.name, "chosen_by": reason, "width": d_in, "model": model, "values": values, "given": given,
              "about": chosen.about}
    return dataclasses.replace(cfg, defaults=chosen.name, default_set=record, **{**values, **given})


def _resolve(cfg: TrainConfig, d_in: int, model: str | None = None) -> TrainConfig:
    """Fill in the default set's values and the device, and check the values."""
    from .devices import dtype_name, resolve_device, resolve_dtype

    cfg = dataclasses.replace(resolve_defaults(cfg, d_in, model), device=str(resolve_device(cfg.device)), dtype=dtype_name(resolve_dtype(cfg.dtype)))
    if cfg.arch not in ARCHS:
        raise UserError(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    if cfg.expansion < 1:
        raise UserError(f"--expansion must be a positive integer, got {cfg.expansion}")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"validation fraction must be between 0 and 1, got {cfg.val_fraction}")
    k = cfg.k
    if not 1 <= k <= d_in * cfg.expansion:
        raise UserError(f"--k {k} is out of range; it must be between 1 and the number of latents ({d_in * cfg.expansion})")
    if cfg.tokens is not None and cfg.tokens < cfg.batch_size:
        raise UserError(f"--tokens {cfg.tokens} is less than one batch ({cfg.batch_size}); give more tokens or a smaller --batch-size")
    return dataclasses.replace(cfg, d_in=d_in, k=k)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) if not isinstance(obj, str) else obj)
    tmp.replace(path)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    data: Iterator[torch.Tensor] | None = None,
    val_acts: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train one SAE and write it, its config and its metrics to `cfg.out`; returns the metrics.

    Reads `cfg.cache` unless `data` (an endless iterator of (batch_size, width) batches) and
    `val_acts` (held-out (rows, width) activations) are given. With `resume`, continues from
    the latest checkpoint in `cfg.out` using the config saved there.
    """
    out = Path(cfg.out)
    checkpoint = None
    if resume:
        if (out / METRICS_FILE).is_file() and _latest_checkpoint(out) is None:
            print(f"saeuron train: {out} is already complete")
            return json.loads((out / METRICS_FILE).read_text())
        checkpoint = _latest_checkpoint(out)
        if checkpoint is not None and (out / CONFIG_FILE).is_file():
            saved = TrainConfig.from_json((out / CONFIG_FILE).read_text())
            cfg = dataclasses.replace(saved, out=cfg.out, cache=cfg.cache or saved.cache, device=cfg.device)
    elif out.exists() and ((out / CONFIG_FILE).exists() or (out / CHECKPOINT_DIR).exists() or (out / "cfg.json").exists()):
        raise UserError(f"{str(out)!r} already holds an SAE run; pass --resume to continue it or choose another --out")

    run_state = json.loads((checkpoint / RUN_STATE_FILE).read_text()) if checkpoint is not None else {}
    exact = "batches_drawn" in run_state  # checkpoints before exact resume: a fresh data order
    data_seed = run_state["data_seed"] + 1 if run_state and not exact else cfg.seed
    with contextlib.ExitStack() as stack:
        if data is None:
            cfg, data, val_acts, split = _from_store(cfg, data_seed)
            stack.enter_context(contextlib.closing(data))
        else:
            if val_acts is None or cfg.tokens is None:
                raise ValueError("in-memory training needs val_acts and cfg.tokens")
            cfg = _resolve(cfg, int(val_acts.shape[1]))
            split = {}
        for _ in range(run_state.get("batches_drawn", 0)):  # replay the stream up to where the checkpoint left it
            next(data)
        return _fit(cfg, out, checkpoint, data, data_seed, run_state.get("elapsed_s", 0.0), val_acts, split)


def _from_store(cfg: TrainConfig, data_seed: int) -> tuple[TrainConfig, Iterator[torch.Tensor], torch.Tensor, dict[str, int]]:
    """Hold out whole prompts of `cfg.cache`: (resolved config, endless training batches, validation rows, split sizes)."""
    if cfg.cache is None:
        raise UserError("no activation cache given; pass --cache FILE")
    prompt_ids = prompts_with_rows(cfg.cache, cfg.hookpoint)
    if len(prompt_ids) < 2:
        raise UserError(f"the store holds rows of {len(prompt_ids)} prompt(s); at least 2 are needed to hold out validation images")
    is_val = validation_prompt_mask(prompt_ids, cfg.val_fraction)
    train_ids, val_ids = prompt_ids[~is_val], prompt_ids[is_val]
    info = open_store(cfg.cache)
    cfg = _resolve(dataclasses.replace(cfg, capture=info.config.get("capture", "output")), info.widths[cfg.hookpoint], info.config.get("model"))
    n_train = count_rows(cfg.cache, cfg.hookpoint, prompts=train_ids, timesteps=cfg.timesteps)
    if n_train == 0 and cfg.timesteps is not None:
        raise UserError(f"no rows of {cfg.hookpoint!r} at --timesteps {' '.join(map(str, cfg.timesteps))}; give timestep values as stored in the cache")
    if n_train < cfg.batch_size:
        raise UserError(f"only {n_train} training rows for {cfg.hookpoint!r}, fewer than one batch ({cfg.batch_size}); lower --batch-size")
    if cfg.tokens is None:
        cfg = dataclasses.replace(cfg, tokens=n_train)
    val = iter_batches(cfg.cache, cfg.hookpoint, cfg.val_tokens, seed=cfg.seed + 1, timesteps=cfg.timesteps, prompts=val_ids,
                       buffer_rows=max(cfg.buffer_rows, cfg.val_tokens))
    with contextlib.closing(val):
        try:
            val_acts = next(val)  # one pass; the first batch holds at most val_tokens rows
        except UserError:
            raise UserError(f"no validation rows of {cfg.hookpoint!r} in the held-out prompts (check --timesteps)") from None
    data = iter_batches(cfg.cache, cfg.hookpoint, cfg.batch_size, seed=data_seed, timesteps=cfg.timesteps, prompts=train_ids,
                        buffer_rows=cfg.buffer_rows, epochs=None)
    return cfg, data, val_acts, {"train_prompts": len(train_ids), "val_prompts": len(val_ids)}


def _fit(cfg: TrainConfig, out: Path, checkpoint: Path | None, data, data_seed: int, elapsed_before: float, val_acts, split) -> dict[str, Any]:
    from sae_lens import SAE, LoggingConfig, SAETrainer, TrainingSAE
    from sae_lens.config import SAETrainerConfig

    steps = cfg.tokens // cfg.batch_size
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, steps // 20)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,  # the constant phase runs at lr, then decays linearly to 0
        lr_scheduler_name="constant",
        lr_warm_up_steps=warmup,
        lr_decay_steps=steps - warmup,
        device=cfg.device,
        autocast=cfg.dtype != "float32" and torch.device(cfg.device).type != "mps",
        dead_feature_window=max(1, min(DEAD_AFTER_TOKENS // cfg.batch_size, steps // 5)),
        feature_sampling_window=max(1, min(2000, steps)),
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(out / CHECKPOINT_DIR),
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    torch.manual_seed(cfg.seed)  # sae-lens draws the initial weights from the global generator
    sae = TrainingSAE.from_dict(_training_sae_config(cfg, cfg.hookpoint).to_dict())
    if checkpoint is not None:
        sae.load_weights_from_checkpoint(checkpoint)
        print(f"saeuron train: resuming {out} from {checkpoint.name} tokens")

    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, cfg.to_json())

    t0 = time.time()

    def after_checkpoint(checkpoint_path: Path | None) -> None:
        if checkpoint_path is None:
            return
        torch.save(_rng_states(), Path(checkpoint_path) / RNG_FILE)
        _write_json(Path(checkpoint_path) / RUN_STATE_FILE, {"elapsed_s": elapsed_before + time.time() - t0, "data_seed": data_seed,
                                                             "batches_drawn": INIT_BATCHES + trainer.n_training_samples // cfg.batch_size})
        for old in (out / CHECKPOINT_DIR).iterdir():  # keep only the newest: each holds weights and Adam state
            if old.is_dir() and old.name != Path(checkpoint_path).name:
                shutil.rmtree(old, ignore_errors=True)

    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data, save_checkpoint_fn=after_checkpoint)
    if checkpoint is not None:
        trainer.load_trainer_state(checkpoint)
        # sae-lens saves a mid-run checkpoint before counting its step: every step draws one full batch
        trainer.n_training_steps = trainer.n_training_samples // cfg.batch_size
        if (checkpoint / RNG_FILE).is_file():
            _restore_rng_states(torch.load(checkpoint / RNG_FILE, weights_only=False))
        # sae-lens counts checkpoint thresholds from 0; drop those already passed
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
    else:
        _init_from_data(trainer, data, INIT_BATCHES)

    try:
        trainer.fit()
    except KeyboardInterrupt:
        trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
        print(f"\nsaeuron train: interrupted; checkpoint saved at {trainer.n_training_samples} tokens, continue with --resume")
        raise
    if cfg.arch == "batchtopk":
        _calibrate_batchtopk_threshold(sae, data)
    wall = elapsed_before + time.time() - t0

    sae.save_inference_model(out)
    saved = SAE.load_from_disk(out, device=cfg.device)  # score what was written, in its inference form
    metrics = {
        "hookpoint": cfg.hookpoint,
        "arch": cfg.arch,
        "inference_arch": saved.cfg.architecture(),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_in * cfg.expansion,
        "k": cfg.k,
        **evaluate_sae(saved, val_acts),
        "train_l0": sae.cfg.metadata.l0,
        "train_dead_fraction": float(trainer.dead_neurons.float().mean().item()),
        "tokens_seen": int(trainer.n_training_samples),
        "steps": int(trainer.n_training_steps),
        "wall_time_s": wall,
        "tokens_per_s": trainer.n_training_samples / max(wall, 1e-9),
        **split,
    }
    _write_json(out / METRICS_FILE, metrics)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return metrics


@torch.no_grad()
def _calibrate_batchtopk_threshold(sae, data: Iterator[torch.Tensor], n_batches: int = 8) -> None:
    """Set the threshold that the saved JumpReLU SAE uses to the mean over fresh training batches of
    the smallest activation BatchTopK keeps.

    sae-lens keeps this as an EMA (rate 0.01) starting from 0, which has not converged in a short
    run: the saved SAE would then fire far more than k latents a token.
    """
    mins = []
    for _ in range(n_batches):
        acts = sae.encode(next(data).to(sae.W_dec.device, sae.W_dec.dtype))
        positive = acts[acts > 0]
        if positive.numel():
            mins.append(positive.min().double())
    if mins:
        sae.topk_threshold = torch.stack(mins).mean().to(sae.topk_threshold.device)


def _rng_states() -> dict:
    """Every random state a training step may draw from (saved with each checkpoint)."""
    return {"torch": torch.random.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_rng_states(states: dict) -> None:
    torch.random.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@torch.no_grad()
def _init_from_data(trainer, data: Iterator[torch.Tensor], n_batches: int = INIT_BATCHES) -> None:
    """Scale inputs to mean norm sqrt(d_in) and start b_dec at their mean (SAeUron), from a few batches."""
    batches = [next(data).float() for _ in range(n_batches)]
    x = torch.cat(batches)
    d_in = x.shape[1]
    scale = d_in**0.5 / x.norm(dim=-1).mean().clamp(min=1e-12).item()
    # the trainer scales every batch by this and folds it into the weights at the end
    trainer.activation_scaler.scaling_factor = scale
    trainer.sae.b_dec.data.copy_(x.mean(0) * scale)


# ---------------------------------------------------------------- CLI


def _cli_train(args: argparse.Namespace) -> int:
    from .cli_args import check_output, device_from_args

    device_from_args(args)  # an unknown or absent device fails before the store is read
    check_output(args.out, "SAE folder", folder=True)
    cfg = TrainConfig(
        out=args.out,
        hookpoint=args.hookpoint,
        cache=args.cache,
        arch=args.arch,
        k=args.k,
        expansion=args.expansion,
        lr=args.lr,
        batch_size=args.batch_size,
        tokens=args.tokens,
        timesteps=tuple(args.timesteps) if args.timesteps else None,
        aux_loss_coefficient=args.aux_loss_coefficient,
        sparsity_coefficient=args.sparsity_coefficient,
        val_fraction=args.val_fraction,
        n_checkpoints=args.checkpoints,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        defaults=args.defaults,
    )
    metrics = train(cfg, resume=args.resume)
    used = TrainConfig.from_json((Path(cfg.out) / CONFIG_FILE).read_text())
    print(
        f"saved SAE to {cfg.out} (default set {used.defaults!r}: {used.arch}, k {used.k}, expansion {used.expansion}, lr {used.lr:g}, "
        f"AuxK {used.aux_loss_coefficient:g}, batch {used.batch_size}): validation FVU {metrics['val_fvu']:.4f}, L0 {metrics['val_l0']:.1f}, "
        f"dead {metrics['val_dead_fraction']:.1%}, {metrics['tokens_seen']} tokens in {metrics['wall_time_s']:.0f} s"
    )
    return 0


def register_cli(subparsers) -> None:
    """Add `saeuron train`."""
    from .cli import command_help
    from .cli_args import POSITIVE_INT, SEED, add_device_args, bounded

    p = subparsers.add_parser("train", help=command_help("train"))
    p.add_argument("--cache", required=True, help="activation store written by `saeuron cache` (file or sharded folder)")
    p.add_argument("--hookpoint", required=True, help="hookpoint whose activations to train on")
    p.add_argument("--out", required=True, help="output folder (sae-lens format + train_config.json + metrics.json)")
    sets = "; ".join(f"{d.name}: {d.arch}, k {'width/40 in [4, width/8]' if d.k_rule == 'saeuron' else d.k_rule}, "
                     f"expansion {d.expansion}, lr {d.lr:g}, AuxK {d.aux_loss_coefficient:g}, batch {d.batch_size}" for d in DEFAULT_SETS.values())
    p.add_argument("--defaults", default="auto", choices=("auto", *DEFAULT_SETS),
                   help=f"the set of defaults for --arch, --k, --expansion, --lr, --aux-loss-coefficient and --batch-size (each flag given "
                        f"overrides its value); auto (default): small below width {SD_MIN_WIDTH} and for minicanvas, else saeuron. {sets}")
    p.add_argument("--arch", default=None, choices=ARCHS, help="SAE architecture (default: the default set's)")
    p.add_argument("--k", type=POSITIVE_INT, default=None, help="active latents per token (default: the default set's)")
    p.add_argument("--expansion", type=bounded(int, 1, 1024), default=None, help="latents per input dimension (default: the default set's)")
    p.add_argument("--lr", type=bounded(float, 0, 10, lo_open=True), default=None, help="Adam learning rate, decayed linearly to 0 (default: the default set's)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=None, help="tokens per batch (default: the default set's)")
    p.add_argument("--tokens", type=bounded(int, 1, 2**62), default=None, help="training tokens (default: one pass over the training rows)")
    p.add_argument("--timesteps", type=bounded(int, 0, 10_000), nargs="+", default=None, help="train only on rows of these timesteps")
    p.add_argument("--aux-loss-coefficient", type=bounded(float, 0), default=None, help="AuxK loss weight for topk/batchtopk (default: the default set's)")
    p.add_argument("--sparsity-coefficient", type=bounded(float, 0), default=1.0, help="l1 (standard) or l0 (jumprelu) loss weight")
    p.add_argument("--val-fraction", type=bounded(float, 0, 1, lo_open=True, hi_open=True), default=0.1, help="fraction of prompts held out for validation (default: 0.1)")
    p.add_argument("--checkpoints", type=bounded(int, 0, 10_000), default=10, help="checkpoints during training (default: 10; only the newest is kept)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the initial weights, the data order and the validation rows sampled")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_device_args(p)
    p.set_defaults(func=_cli_train)
