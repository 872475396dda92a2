"""Concept scores per timestep and feature, and feature selection (SAeUron's rule).

For concept c at step t, with mu_c the mean latent vector over images of c (each image's
latents first averaged over spatial positions) and mu_o the same over images of the other
concepts of the same kind (other styles for a style):

    score_t = mu_c / sum(mu_c) - mu_o / sum(mu_o)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import UserError

FORMAT = "saeuron-concepts-v1"


@dataclass
class ConceptScores:
    """Per-concept, per-step, per-feature mean activations and scores of one SAE."""

    concepts: list[str]  # "style:neon", "object:star", ...
    timesteps: np.ndarray  # (T,) the timestep of each step index
    mean_acts: np.ndarray  # (C, T, F) mean over the concept's images of position-averaged latents
    scores: np.ndarray  # (C, T, F)
    n_images: np.ndarray  # (C,)

    def index(self, concept: str) -> int:
        """Row of a concept ('style:NAME' / 'object:NAME'); clear error if unknown."""
        if concept not in self.concepts:
            raise UserError(f"unknown concept {concept!r}; the scores know {', '.join(self.concepts)}")
        return self.concepts.index(concept)

    def kind_rows(self, kind: str) -> list[int]:
        """Rows of every concept of one kind ('style' or 'object')."""
        return [i for i, c in enumerate(self.concepts) if c.split(":", 1)[0] == kind]

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

    def add(self, labels: list[str], step: int, image_mean_f: np.ndarray) -> None:
        """Add one image's position-averaged latents at one step to each of its concepts."""
        for c in labels:
            i = self._row[c]
            self.sums[i, step] += image_mean_f
            self.counts[i, step] += 1

    def scores(self, timesteps: np.ndarray) -> ConceptScores:
        """Mean activations and SAeUron scores (mu_o over the other concepts of the same kind)."""
        if (self.counts == 0).any():
            missing = sorted({self.concepts[i] for i in np.nonzero((self.counts == 0).any(1))[0]})
            raise UserError(f"no images for concepts {missing} at some steps; the cache must cover every concept at every step")
        means = self.sums / self.counts[..., None]
        scores = np.zeros_like(means)
        kinds = [c.split(":", 1)[0] for c in self.concepts]
        for i, kind in enumerate(kinds):
            others = [j for j, k in enumerate(kinds) if k == kind and j != i]
            if not others:
                continue
            other_mean = self.sums[others].sum(0) / self.counts[others].sum(0)[..., None]
            scores[i] = _normalise(means[i]) - _normalise(other_mean)
        return ConceptScores(self.concepts, np.asarray(timesteps), means.astype(np.float32), scores.astype(np.float32),
                             self.counts[:, 0].copy())


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
