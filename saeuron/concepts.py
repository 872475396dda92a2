"""Concept scores per timestep and feature, and feature selection (SAeUron's rule).

For concept c at step t, with mu_c the mean latent vector over images of c (each image's
latents first averaged over spatial positions) and mu_o the same over images of the other
concepts of the same kind (other styles for a style):

    score_t = mu_c / sum(mu_c) - mu_o / sum(mu_o)

A kind with a single value (`nudity:yes`) has no other concepts: mu_o is then the mean over the
images whose prompts lack the label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch
import numpy as np

from .concept_set import Concept, ConceptSet
from .errors import UserError, read_json

FORMAT = "saeuron-concepts-v1"


@dataclass
class ConceptScores:
    """Per-concept, per-step, per-feature mean activations and scores of one SAE."""

    concepts: list[str]  # "style:neon", "object:star", ...
    timesteps: np.ndarray  # (T,) the timestep of each step index
    mean_acts: np.ndarray  # (C, T, F) mean over the concept's images of position-averaged latents
    scores: np.ndarray  # (C, T, F)
    n_images: np.ndarray  # (C,)
    steps: np.ndarray | None = None  # (T,) step index of each row (None = 0..T-1)
    seeds: np.ndarray | None = None  # seeds of the cached images the scores came from (None = unknown)
    other_acts: np.ndarray | None = None  # (C, T, F) mu_o of each concept (None: written before it was kept)
    latents: np.ndarray | None = None  # (C,) the latent concept supervision bound each concept to (None: unsupervised SAE)

    def kind(self, row: int) -> str:
        """The kind of a concept row."""
        return Concept.parse(self.concepts[row]).kind

    @property
    def kinds(self) -> list[str]:
        """The kinds of the scored concepts, in order."""
        return list(dict.fromkeys(self.kind(i) for i in range(len(self.concepts))))

    def index(self, concept: str) -> int:
        """Row of a concept ('KIND:VALUE'); clear error naming the valid kinds or values if unknown."""
        if concept not in self.concepts:
            c = Concept.parse(concept)
            if c.kind not in self.kinds:
                raise UserError(f"unknown concept kind {c.kind!r} in {concept!r}; the scores know the kinds {', '.join(self.kinds) or '(none)'}")
            raise UserError(f"unknown concept {concept!r}; the scores know the {c.kind} values "
                            f"{', '.join(k.value for k in map(Concept.parse, self.concepts) if k.kind == c.kind)}")
        return self.concepts.index(concept)

    def kind_rows(self, kind: str) -> list[int]:
        """Rows of every concept of one kind."""
        return [i for i in range(len(self.concepts)) if self.kind(i) == kind]

    def exclusive_scores(self, row: int, same_kind_too: bool = False) -> np.ndarray:
        """(T, F) scores of one concept, zeroed where a rival concept scores as high or higher.

        Rivals are the concepts of the other kind: a feature that a style carries more than the
        target object does (a style x object interaction, or a style feature that fires a little
        more on that object) is then never selected for the object. With `same_kind_too` every
        other concept is a rival, so a feature that one style shares with another style that
        fires it more is left out too.
        """
        kind = self.kind(row)
        rivals = [i for i in range(len(self.concepts)) if i != row and (same_kind_too or self.kind(i) != kind)]
        own = self.scores[row]
        if not rivals:
            return own
        return np.where(own > self.scores[rivals].max(0), own, 0.0).astype(own.dtype)

    def dominance(self, row: int) -> np.ndarray:
        """(T, F) how many times as strongly the concept fires each feature (mean activation) as
        the other concept that fires it most; inf where no other concept fires it."""
        others = np.delete(self.mean_acts, row, axis=0).max(0)
        own = self.mean_acts[row]
        return np.divide(own, others, out=np.full_like(own, np.inf), where=others > 0)

    def bind_latents(self, bound: dict[str, int]) -> None:
        """Record the latents concept supervision bound the concepts to (`supervise.assign_latents`; {}: none)."""
        if bound:
            self.latents = np.array([bound.get(c, -1) for c in self.concepts], dtype=np.int64)

    def bound_latent(self, row: int) -> int:
        """The latent bound to a concept row; a clear error for an unsupervised SAE or an unbound concept."""
        latent = -1 if self.latents is None else int(self.latents[row])
        if latent < 0:
            raise UserError(f"no latent is bound to {self.concepts[row]!r}: selection 'assigned' needs an SAE from "
                            f"`saeuron supervise` whose concept set holds it")
        return latent

    def check_unseen(self, seeds, where: str = "") -> None:
        """Refuse evaluation seeds whose cached images these scores came from: the features would be selected on the very
        images they are judged on (`where`: which SAE, for the message)."""
        if self.seeds is not None and (shared := sorted(set(self.seeds.tolist()) & set(seeds))):
            raise UserError(f"evaluation seeds {shared} were also used to compute the concept scores{where} (cache seeds "
                            f"{sorted(set(self.seeds.tolist()))}); evaluate on seeds disjoint from them")

    def save(self, path: Path, config: dict | None = None) -> None:
        """Write to HDF5 (replacing the file atomically)."""
        tmp = Path(str(path) + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["config"] = json.dumps(config or {})
            f["concepts"] = np.array(self.concepts, dtype=h5py.string_dtype())
            f["timesteps"] = self.timesteps
            f.create_dataset("mean_acts", data=self.mean_acts.astype(np.float32), compression="gzip")
            f.create_dataset("scores", data=self.scores.astype(np.float32), compression="gzip")
            f["n_images"] = self.n_images
            f["steps"] = self.steps if self.steps is not None else np.arange(len(self.timesteps))
            if self.seeds is not None:
                f["seeds"] = np.asarray(self.seeds, dtype=np.int64)
            if self.other_acts is not None:
                f.create_dataset("other_acts", data=self.other_acts.astype(np.float32), compression="gzip")
            if self.latents is not None:
                f["latents"] = np.asarray(self.latents, dtype=np.int64)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ConceptScores":
        """Read a file written by `save`; a foreign file is a clear error."""
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise UserError(f"{str(path)!r} is not a saeuron concept-score file (format {f.attrs.get('format')!r})")
                return cls(
                    concepts=[c.decode() if isinstance(c, bytes) else c for c in f["concepts"][()]],
                    timesteps=f["timesteps"][()],
                    mean_acts=f["mean_acts"][()],
                    scores=f["scores"][()],
                    n_images=f["n_images"][()],
                    steps=f["steps"][()],
                    seeds=f["seeds"][()] if "seeds" in f else None,
                    other_acts=f["other_acts"][()] if "other_acts" in f else None,
                    latents=f["latents"][()] if "latents" in f else None,
                )
        except (OSError, KeyError) as err:
            raise UserError(f"cannot read concept scores from {str(path)!r}: {err}") from None


class ConceptMeanAccumulator:
    """Running sums of position-averaged latents per (concept, step), fed one image-step at a time."""

    def __init__(self, concepts: list[str], n_steps: int, n_features: int):
        self.concepts = list(concepts)
        self._row = {c: i for i, c in enumerate(self.concepts)}
        self.sums = np.zeros((len(concepts), n_steps, n_features), np.float64)
        self.counts = np.zeros((len(concepts), n_steps), np.int64)
        self.total_sums = np.zeros((n_steps, n_features), np.float64)  # every image, labelled or not
        self.total_counts = np.zeros(n_steps, np.int64)

    def add(self, labels: list[str], step: int, image_mean_f: np.ndarray) -> None:
        """Add one image's position-averaged latents at one step to each of its concepts (and to the total)."""
        self.total_sums[step] += image_mean_f
        self.total_counts[step] += 1
        for c in labels:
            i = self._row[c]
            self.sums[i, step] += image_mean_f
            self.counts[i, step] += 1

    def scores(self, timesteps: np.ndarray) -> ConceptScores:
        """Mean activations and SAeUron scores (mu_o over the other concepts of the same kind, or the unlabelled rest)."""
        if (self.counts == 0).any():
            missing = sorted({self.concepts[i] for i in np.nonzero((self.counts == 0).any(1))[0]})
            raise UserError(f"no images for concepts {missing} at some steps; the cache must cover every concept at every step")
        means = self.sums / self.counts[..., None]
        other = np.zeros_like(means)
        kinds = [Concept.parse(c).kind for c in self.concepts]
        for i, kind in enumerate(kinds):
            others = [j for j, k in enumerate(kinds) if k == kind and j != i]
            if others:
                other_sum, other_count = self.sums[others].sum(0), self.counts[others].sum(0)
            else:  # a kind with one value: against the images without it (none: no contrast, score 0)
                other_sum, other_count = self.total_sums - self.sums[i], self.total_counts - self.counts[i]
                if (other_count == 0).any():
                    other_sum, other_count = self.sums[i], self.counts[i]
            other[i] = other_sum / other_count[..., None]
        scores = _normalise(means) - _normalise(other)
        return ConceptScores(self.concepts, np.asarray(timesteps), means.astype(np.float32), scores.astype(np.float32),
                             self.counts[:, 0].copy(), other_acts=other.astype(np.float32))


def _normalise(mean_tf: np.ndarray) -> np.ndarray:
    """Divide each step's mean vector by its sum (zero stays zero)."""
    total = mean_tf.sum(-1, keepdims=True)
    return np.divide(mean_tf, total, out=np.zeros_like(mean_tf), where=total > 0)


def select_features(scores_tf: np.ndarray, percentile: float | None = None, top_n: int | None = None) -> list[np.ndarray]:
    """Per step, the features whose score is above the percentile (or the top-n), best first."""
    if (percentile is None) == (top_n is None):
        raise UserError("give exactly one of percentile or top_n")
    if percentile is not None and not 0 <= percentile < 100:
        raise UserError(f"percentile must be in [0, 100), got {percentile}")
    chosen = []
    for row in scores_tf:
        if top_n is not None:
            ids = np.argsort(-row, kind="stable")[:top_n]
        else:
            cut = np.percentile(row, percentile)
            ids = np.nonzero(row > cut)[0]
            ids = ids[np.argsort(-row[ids], kind="stable")]
        chosen.append(ids[row[ids] > 0])  # a feature that carries the concept less than the rest is never chosen
    return chosen


@dataclass
class ImageStepMeans:
    """An SAE's latents over a cached run, averaged over positions per (prompt, seed, step): the input of every score."""

    table: ConceptSet  # the store's labelled prompts
    keys: np.ndarray  # (N, 3) prompt index, seed, step index of each mean
    means: np.ndarray  # (N, F)
    steps: list[int]  # the cached step indices, in order
    timesteps: np.ndarray  # (T,) their timesteps
    seeds: np.ndarray  # the seeds of the images

    def accumulate(self, concepts: list[str], where=lambda row: True) -> ConceptScores:
        """Scores of `concepts` over the images whose prompt row passes `where` (labels of other concepts ignored)."""
        acc = ConceptMeanAccumulator(concepts, len(self.steps), self.means.shape[1])
        step_row = {s: i for i, s in enumerate(self.steps)}
        known = set(concepts)
        for (prompt, _seed, step), mean in zip(self.keys, self.means):
            row = self.table.rows[int(prompt)]
            if where(row):
                acc.add([c for c in self.table.labels(row) if c in known], step_row[int(step)], mean)
        scores = acc.scores(self.timesteps)
        scores.steps = np.array(self.steps)
        scores.seeds = self.seeds
        return scores

    def scores(self) -> ConceptScores:
        """SAeUron's scores of every concept of the store."""
        return self.accumulate(self.table.concepts())

    def context_scores(self, kind: str) -> dict[str, ConceptScores]:
        """Per value v of `kind`, the scores of the concepts of the other kinds on the images of v alone (an object's
        features within one style): what a concept carries in one context, which the mean over contexts can hide."""
        others = [c for c in self.table.concepts() if Concept.parse(c).kind != kind]
        if kind not in self.table.kinds or not others:
            raise UserError(f"context scores need a kind {kind!r} of the store and another kind; it has {', '.join(self.table.kinds)}")
        return {f"{kind}:{v}": self.accumulate(others, lambda row, v=v: row.get(kind) == v) for v in self.table.values(kind)}


@torch.no_grad()
def score_cache(cache_path: Path, hookpoint: str, sae, block_rows: int = 1 << 15, branch: str = "cond") -> ConceptScores:
    """Concept scores of an SAE over a cached run: latents averaged per image and step, then per concept."""
    return image_step_means(cache_path, hookpoint, sae, block_rows, branch).scores()


@torch.no_grad()
def image_step_means(cache_path: Path, hookpoint: str, sae, block_rows: int = 1 << 15, branch: str = "cond") -> ImageStepMeans:
    """The SAE's latents over a cached run (CFG branch `branch`), averaged over positions per image and step."""
    from tqdm import tqdm

    from .cache import open_store, read_rows, row_provenance
    from .pipelines import CFG_BRANCHES

    info = open_store(cache_path)
    if hookpoint not in info.widths:
        raise UserError(f"hookpoint {hookpoint!r} is not in {str(cache_path)!r}; it holds {', '.join(info.hookpoints)}")
    table = info.concept_set
    concepts = table.concepts()
    if not concepts:
        raise UserError(f"{str(cache_path)!r} holds unlabelled prompts only; cache a labelled prompt file (.csv / .jsonl with a "
                        "'prompt' column and a column per concept kind) or --minicanvas to score concepts")
    if sae.cfg.d_in != info.widths[hookpoint]:
        raise UserError(f"SAE width {sae.cfg.d_in} does not match hookpoint {hookpoint!r} of width {info.widths[hookpoint]}")
    prov = row_provenance(cache_path, hookpoint)
    keep = prov["branch"] == CFG_BRANCHES.index(branch)
    if not keep.any():
        raise UserError(f"{str(cache_path)!r} holds no rows of CFG branch {branch!r}")
    # one group per (prompt, seed, step): an image at one step
    keys = np.stack([prov["prompt"], prov["seed"], prov["step"]], 1)
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.ravel()
    n_feat = sae.cfg.d_sae
    device = sae.W_dec.device
    sums = torch.zeros(len(uniq), n_feat, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    counts = np.bincount(group[keep], minlength=len(uniq))
    n = len(group)
    for start in tqdm(range(0, n, block_rows), desc=f"scoring {hookpoint}"):
        stop = min(start + block_rows, n)
        mask = keep[start:stop]
        if not mask.any():
            continue
        rows = read_rows(cache_path, hookpoint, start, stop)[torch.from_numpy(mask)]
        latents = sae.encode(rows.to(device, sae.W_dec.dtype))
        sums.index_add_(0, torch.from_numpy(group[start:stop][mask]).to(device), latents.to(sums.dtype))
    steps, first_row = np.unique(prov["step"], return_index=True)  # vectorised: stores hold millions of rows
    means = (sums.cpu().double() / torch.from_numpy(np.maximum(counts, 1))[:, None]).numpy()
    seen = counts > 0
    return ImageStepMeans(table, uniq[seen], means[seen], steps.tolist(), prov["timestep"][first_row].astype(np.int64),
                          np.unique(prov["seed"][keep]).astype(np.int64))


def score_file_config(path: Path) -> dict:
    """The config a concept-score file was written with (its "cache", "sae", "hookpoint"; {} if none)."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs.get("config", "{}"))


def _is_score_file(path: Path) -> bool:
    """A concept-score file written by `saeuron score` (which a new scoring may replace)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except OSError:
        return False


def _cmd_score(args) -> None:
    from .cli_args import check_output, device_from_args
    from .sae import load_sae
    from .supervise import read_concept_latents

    hookpoint = args.hookpoint
    device, dtype = device_from_args(args)
    if not Path(args.sae).is_dir():
        raise UserError(f"SAE folder {args.sae!r} not found; give the folder `saeuron train` wrote")
    sae_cfg = Path(args.sae) / "train_config.json"
    if hookpoint is None and sae_cfg.exists():
        hookpoint = read_json(sae_cfg, "SAE training config").get("hookpoint")
    if hookpoint is None:
        raise UserError("give --hookpoint: the SAE folder does not say which hookpoint it was trained on")
    out = Path(args.out) if args.out else Path(args.sae) / "concepts.h5"
    check_output(out, "concept-score file", may_replace=_is_score_file)
    sae = load_sae(args.sae, hookpoint=hookpoint, device=device, dtype=dtype).eval()
    scores = score_cache(Path(args.cache), hookpoint, sae)
    scores.bind_latents(read_concept_latents(args.sae))
    scores.save(out, {"cache": str(args.cache), "sae": str(args.sae), "hookpoint": hookpoint})
    print(f"scored {len(scores.concepts)} concepts x {len(scores.timesteps)} steps x {scores.scores.shape[2]} features -> {out}")


def register_cli(sub) -> None:
    """Add `score`."""
    from .cli import command_help
    from .cli_args import add_device_args

    p = sub.add_parser("score", help=command_help("score"))
    p.add_argument("--cache", required=True, help="the activation store (.h5 or sharded folder)")
    p.add_argument("--sae", required=True, help="the SAE folder")
    p.add_argument("--hookpoint", help="default: the hookpoint the SAE was trained on")
    p.add_argument("--out", help="default: SAE_DIR/concepts.h5")
    add_device_args(p)
    p.set_defaults(func=_cmd_score)
