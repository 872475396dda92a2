"""Concept-supervised SAE fine-tuning (SAEmnesia): bind each labelled concept of the store to one latent.

SAEmnesia (Cassano et al., arXiv 2509.21379) fine-tunes an SAE with a cross-entropy term on concept labels, so that a
concept's information gathers in one latent ("feature centralisation") and erasing it takes that latent and a
multiplier instead of a search over feature sets. Here each concept of the store's concept set is bound to the latent
that scores highest for it (SAeUron's score over all steps, greedily without repeats, strongest claim first). Per kind,
the pre-activations of that kind's bound latents are the logits of a softmax over its values, trained on every
conditional row against its image's label, beside the reconstruction loss:

    L = ||x - x_hat||^2 / Var(x) + weight * sum over kinds of CE(h_pre[bound latents of the kind], label)

The output is an SAE folder as `saeuron train` + `saeuron score` write it (sae-lens files, `train_config.json`,
`concepts.h5`, whose scores carry the binding), plus `concept_latents.json` (concept -> latent) and `supervise.json`
(the config and the metrics before and after, on held-out prompts). `--selection assigned` ablates the bound latent.
An interrupted run resumes from `checkpoint.pt` (written after every epoch).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache.reader import read_rows, row_provenance
from .cache.store import check_hookpoint, open_store
from .concept_set import Concept
from .errors import UserError, read_json
from .pipelines import CFG_BRANCHES

LATENTS_FILE = "concept_latents.json"
RECORD_FILE = "supervise.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class SuperviseConfig:
    """One supervised fine-tuning run; written to `out/supervise.json`."""

    sae: str  # the SAE folder to start from (with concepts.h5, or it is scored first)
    cache: str  # the labelled activation store of the SAE's hookpoint
    out: str
    weight: float = 1.0  # of the cross-entropy term against the normalised reconstruction loss
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 4096
    seed: int = 0  # batch order
    val_fraction: float = 0.1  # prompts held out for the metrics (as `saeuron train` holds them out)
    val_rows: int = 16384  # at most this many held-out rows are measured
    block_rows: int = 1 << 16  # rows read from the store at a time (memory stays bounded by one block)
    device: str = "auto"


def read_concept_latents(folder: str | Path) -> dict[str, int]:
    """concept -> bound latent of a supervised SAE folder ({} for an unsupervised one)."""
    return {str(k): int(v) for k, v in read_json(Path(folder) / LATENTS_FILE, "concept-latent file", default={}).items()}


def assign_latents(scores) -> dict[str, int]:
    """One latent per concept: its best by SAeUron's score summed over steps, no latent twice, strongest claim first."""
    total = scores.scores.sum(axis=1)  # (C, F)
    if len(scores.concepts) > total.shape[1]:
        raise UserError(f"{len(scores.concepts)} concepts cannot each get one of the SAE's {total.shape[1]} latents")
    taken: set[int] = set()
    bound: dict[str, int] = {}
    for row in np.argsort(-total.max(axis=1), kind="stable"):
        latent = next(int(f) for f in np.argsort(-total[row], kind="stable") if int(f) not in taken)
        taken.add(latent)
        bound[scores.concepts[row]] = latent
    return {c: bound[c] for c in scores.concepts}


def _row_labels(cache: str, hookpoint: str, concepts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per kind, each row's value index among the kind's concepts (-1: unconditional row or unlabelled prompt), and
    each row's prompt index."""
    prov = row_provenance(cache, hookpoint)
    prompts = open_store(cache).prompts
    cond = prov["branch"] == CFG_BRANCHES.index("cond")
    labels = {}
    parsed = [Concept.parse(c) for c in concepts]
    for kind in dict.fromkeys(c.kind for c in parsed):
        values = [c.value for c in parsed if c.kind == kind]
        per_prompt = np.array([values.index(p[kind]) if p.get(kind) in values else -1 for p in prompts], dtype=np.int64)
        labels[kind] = np.where(cond, per_prompt[prov["prompt"]], -1)
    return labels, prov["prompt"]


def pre_activations(sae, x: torch.Tensor) -> torch.Tensor:
    """The encoder's pre-activations, on the scale the activation function sees (sae-lens SAEs with `b_enc`)."""
    h = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        h = h * sae.W_dec.norm(dim=-1)
    return h


def _losses(sae, x: torch.Tensor, labels: dict[str, torch.Tensor], heads: dict[str, torch.Tensor], variance: torch.Tensor):
    """(normalised reconstruction loss, summed cross-entropy over kinds) of one batch."""
    mse = (sae(x) - x).pow(2).sum(-1).mean() / variance
    h = pre_activations(sae, x)
    ce = x.new_zeros(())
    for kind, head in heads.items():
        keep = labels[kind] >= 0
        if keep.any():
            ce = ce + torch.nn.functional.cross_entropy(h[keep][:, head], labels[kind][keep])
    return mse, ce


@torch.no_grad()
def measure(sae, x: torch.Tensor, labels: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> dict[str, float]:
    """FVU, and per kind: how often the bound latents' argmax is the row's value, and how often its value's latent fires."""
    from .train import evaluate_sae

    out = {"fvu": round(evaluate_sae(sae, x)["val_fvu"], 4)}
    h, acts = pre_activations(sae, x), sae.encode(x)
    for kind, head in heads.items():
        keep = labels[kind] >= 0
        y = labels[kind][keep]
        out[f"{kind}_accuracy"] = round(float((h[keep][:, head].argmax(1) == y).float().mean()), 4)
        out[f"{kind}_fires"] = round(float((acts[keep][:, head].gather(1, y[:, None]) > 0).float().mean()), 4)
    return out


def _store_blocks(n_rows: int, block_rows: int, order_seed: list[int] | None = None) -> list[tuple[int, int]]:
    """Row ranges of the store, read one at a time; in a seeded random order when `order_seed` is given."""
    blocks = [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]
    if order_seed is None:
        return blocks
    return [blocks[i] for i in np.random.default_rng(order_seed).permutation(len(blocks))]


def _labelled_batches(cfg: SuperviseConfig, hookpoint: str, use: np.ndarray, labels: dict[str, np.ndarray], epoch: int | None,
                      device) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(rows, labels per kind) of the rows where `use` is true, one store block read at a time: for training (`epoch`
    given) blocks in random order, each shuffled within; for measuring, in store order as one batch per block."""
    rng = np.random.default_rng([cfg.seed, epoch, 1]) if epoch is not None else None
    for lo, hi in _store_blocks(len(use), cfg.block_rows, None if epoch is None else [cfg.seed, epoch]):
        picked = np.nonzero(use[lo:hi])[0]
        if not len(picked):
            continue
        x = read_rows(cfg.cache, hookpoint, lo, hi)
        if rng is not None:
            picked = picked[rng.permutation(len(picked))]
        step = cfg.batch_size if rng is not None else len(picked)
        for i in range(0, len(picked), step):
            rows = picked[i:i + step]
            yield x[rows].to(device), {k: torch.from_numpy(a[lo:hi][rows]).to(device) for k, a in labels.items()}


def supervise(cfg: SuperviseConfig, progress: bool = True) -> dict:
    """Fine-tune `cfg.sae` with concept supervision into `cfg.out` (resuming an interrupted run); returns the record."""
    from .concepts import ConceptScores, score_cache
    from .devices import resolve_device
    from .sae import load_sae
    from .train import validation_prompt_mask

    src, out = Path(cfg.sae), Path(cfg.out)
    if not (cfg.weight >= 0 and cfg.epochs >= 1 and cfg.lr > 0 and cfg.batch_size >= 1):  # NaN fails too
        raise UserError(f"need weight >= 0, epochs >= 1, lr > 0, batch size >= 1; got {cfg.weight}, {cfg.epochs}, {cfg.lr}, {cfg.batch_size}")
    if src.resolve() == out.resolve():
        raise UserError(f"the output folder {str(out)!r} is the SAE folder itself; give a new folder")
    hookpoint = read_json(src / "train_config.json", "SAE training config").get("hookpoint")
    if not hookpoint:
        raise UserError(f"{str(src)!r} has no train_config.json naming its hookpoint")
    info = open_store(cfg.cache)
    check_hookpoint(info, hookpoint)
    device = resolve_device(cfg.device)
    sae = load_sae(src, expected_width=info.widths[hookpoint], hookpoint=hookpoint, device=device, dtype=torch.float32)
    if not hasattr(sae, "b_enc"):
        raise UserError(f"the SAE in {str(src)!r} has no encoder bias (architecture {sae.cfg.architecture()!r}); concept supervision needs one")
    scores_path = src / "concepts.h5"
    scores = ConceptScores.load(scores_path) if scores_path.exists() else score_cache(Path(cfg.cache), hookpoint, sae.eval())
    bound = assign_latents(scores)
    label_arrays, prompt_of_row = _row_labels(cfg.cache, hookpoint, scores.concepts)
    if all((a < 0).all() for a in label_arrays.values()):
        raise UserError(f"no conditional row of {cfg.cache!r} carries a label of the concepts {', '.join(scores.concepts)}")
    heads = {k: torch.tensor([bound[scores.concepts[r]] for r in scores.kind_rows(k)], device=device) for k in label_arrays}
    is_val = validation_prompt_mask(prompt_of_row, cfg.val_fraction)
    val_use = np.zeros(len(is_val), bool)  # at most val_rows held-out rows, spread over the store
    held_out = np.nonzero(is_val if is_val.any() else ~is_val)[0]
    val_use[held_out[np.linspace(0, len(held_out) - 1, min(cfg.val_rows, len(held_out))).astype(int)]] = True

    val_batches = list(_labelled_batches(cfg, hookpoint, val_use, label_arrays, None, device))
    val_x = torch.cat([x for x, _ in val_batches])
    val_labels = {k: torch.cat([lab[k] for _, lab in val_batches]) for k in label_arrays}
    before = measure(sae.eval(), val_x, val_labels, heads)
    variance = val_x.var(0).sum()  # normalises the reconstruction loss (as FVU does)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, start_epoch, history, elapsed = out / CHECKPOINT_FILE, 0, [], 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != dataclasses.asdict(cfg):
            raise UserError(f"{str(out)!r} holds an interrupted run with another config; give a new --out or remove {CHECKPOINT_FILE}")
        sae.load_state_dict(ckpt["sae"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, history, elapsed = ckpt["epoch"], ckpt["history"], ckpt["elapsed"]
    sae.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0, totals, n = time.time(), [0.0, 0.0], 0
        for x, labels in _labelled_batches(cfg, hookpoint, ~is_val, label_arrays, epoch, device):
            mse, ce = _losses(sae, x, labels, heads, variance)
            opt.zero_grad()
            (mse + cfg.weight * ce).backward()
            opt.step()
            totals, n = [totals[0] + mse.item(), totals[1] + ce.item()], n + 1
        elapsed += time.time() - t0
        history.append({"epoch": epoch + 1, "reconstruction": round(totals[0] / n, 5), "cross_entropy": round(totals[1] / n, 4)})
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: {history[-1]}", flush=True)
        tmp = out / (CHECKPOINT_FILE + ".tmp")
        torch.save({"config": dataclasses.asdict(cfg), "sae": sae.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                    "history": history, "elapsed": elapsed}, tmp)
        tmp.replace(ckpt_path)
    sae.eval()
    record = {"config": dataclasses.asdict(cfg), "hookpoint": hookpoint, "concept_latents": bound, "before": before,
              "after": measure(sae, val_x, val_labels, heads), "history": history, "wall_time_s": round(elapsed, 1),
              "measured_on": f"{len(val_x)} rows of " + ("held-out prompts" if is_val.any() else "the training prompts (none held out)")}
    sae.save_model(out)
    shutil.copy(src / "train_config.json", out / "train_config.json")
    (out / LATENTS_FILE).write_text(json.dumps(bound, indent=1))
    rescored = score_cache(Path(cfg.cache), hookpoint, sae)
    rescored.bind_latents(bound)
    rescored.save(out / "concepts.h5", {"cache": str(cfg.cache), "sae": str(out), "hookpoint": hookpoint})
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1))
    ckpt_path.unlink()
    return record


def _cmd_supervise(args) -> None:
    from .cli_args import device_from_args

    out = Path(args.out)
    if (out / RECORD_FILE).exists():
        raise UserError(f"{str(out)!r} already holds a supervised SAE; choose another --out")
    if not Path(args.sae).is_dir():
        raise UserError(f"SAE folder {args.sae!r} not found; give the folder `saeuron train` wrote")
    device, dtype = device_from_args(args)
    if dtype != torch.float32:
        raise UserError(f"concept supervision trains in float32 (the SAE's own dtype); got --dtype {args.dtype}")
    record = supervise(SuperviseConfig(sae=args.sae, cache=args.cache, out=args.out, weight=args.weight, epochs=args.epochs,
                                       lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=str(device)))
    b, a = record["before"], record["after"]
    print(f"supervised SAE -> {out}: FVU {b['fvu']} -> {a['fvu']}; "
          + "; ".join(f"{k} accuracy {b[f'{k}_accuracy']} -> {a[f'{k}_accuracy']}" for k in
                      dict.fromkeys(Concept.parse(c).kind for c in record["concept_latents"])))


def register_cli(sub) -> None:
    """Add `supervise`."""
    from .cli import command_help
    from .cli_args import POSITIVE_INT, SEED, add_device_args, bounded

    p = sub.add_parser("supervise", help=command_help("supervise"))
    p.add_argument("--sae", required=True, help="the SAE folder to fine-tune (`saeuron train`'s)")
    p.add_argument("--cache", required=True, help="the labelled activation store of its hookpoint")
    p.add_argument("--out", required=True, help="a new folder for the supervised SAE")
    p.add_argument("--weight", type=bounded(float, 0, 1000), default=1.0, help="weight of the concept cross-entropy (default 1)")
    p.add_argument("--epochs", type=bounded(int, 1, 10_000), default=20, help="passes over the training rows (default 20)")
    p.add_argument("--lr", type=bounded(float, 0, 10, lo_open=True), default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4096)
    p.add_argument("--seed", type=SEED, default=0, help="batch order")
    add_device_args(p)
    p.set_defaults(func=_cmd_supervise)
