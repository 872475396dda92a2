"""How concept-specific are the features SAeUron selects? A check that needs no generation.

    python scripts/probe_selection.py --sae RUN/saes/HOOKPOINT [--percentile 99.7]

For every concept in the SAE's concepts.h5, the (step, feature) pairs that SAeUron's rule
selects at the percentile, how many of them are *kind-exclusive* (the target scores the feature
higher than every concept of the other kind does; a style feature that fires a little more on
stars is not), and how many are *specific* (the target scores it higher than every other
concept; a palette feature that two styles share is specific to at most one of them). Few
exclusive features for objects means that erasing an object with this SAE will also change
styles; unspecific style features mean that erasing a style also changes its neighbours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saeuron.ablate import plan_ablation  # noqa: E402
from saeuron.concepts import ConceptScores  # noqa: E402


def selection_report(scores: ConceptScores, percentile: float) -> list[dict]:
    """Per concept: selected (step, feature) pairs, how many are kind-exclusive / specific, and their mean score."""
    rows = []
    for concept in scores.concepts:
        r = scores.index(concept)
        plan = plan_ablation(scores, [concept], -1.0, percentile=percentile)
        exclusive, specific = scores.exclusive_scores(r), scores.exclusive_scores(r, same_kind_too=True)
        step_row = {int(s): t for t, s in enumerate(scores.steps if scores.steps is not None else range(len(scores.timesteps)))}
        picked = [(step_row[step], f) for step, sa in plan.steps.items() for f in sa.features.tolist()]
        rows.append({"concept": concept, "selected": len(picked),
                     "exclusive": int(sum(exclusive[t, f] > 0 for t, f in picked)),
                     "specific": int(sum(specific[t, f] > 0 for t, f in picked)),
                     "mean_score": float(np.mean([scores.scores[r, t, f] for t, f in picked])) if picked else 0.0})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, required=True, help="SAE folder with concepts.h5")
    p.add_argument("--percentile", type=float, default=99.7)
    args = p.parse_args()
    rows = selection_report(ConceptScores.load(args.sae / "concepts.h5"), args.percentile)
    print("| concept | selected (step, feature) | kind-exclusive | specific | mean score |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['concept']} | {row['selected']} | {row['exclusive']} | {row['specific']} | {row['mean_score']:.4f} |")
    for kind in ("style", "object"):
        sel = [r for r in rows if r["concept"].startswith(kind)]
        if sel:
            total, counts = sum(r["selected"] for r in sel), [sum(r[k] for r in sel) for k in ("exclusive", "specific")]
            shares = " | ".join(f"{n} ({100 * n / max(total, 1):.0f}%)" for n in counts)
            print(f"| **all {kind}s** | {total} | {shares} | |")


if __name__ == "__main__":
    main()
