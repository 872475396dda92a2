"""Which UNet block carries concept-specific SAE features? Cache, train and score several blocks, then probe.

    python scripts/probe_hookpoints.py --run /tmp/hookpoints [--hookpoints A,B,...] [--seeds 0] [--tokens 1500000]

SAeUron erases objects on `up_blocks.1.attentions.1` of Stable Diffusion. On a small model the
object may live elsewhere. `demo.build_run` caches the minicanvas prompts at every hookpoint
(one store), trains an SAE on each with the demo's settings and scores the concepts; this reports,
per kind, how many of the (step, feature) pairs SAeUron's rule selects are kind-exclusive and
specific (see `probe_selection.py`): a block whose object selections are specific is one where
an object can be erased without touching the styles. Every stage resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_selection import selection_report  # noqa: E402
from saeuron.concepts import ConceptScores  # noqa: E402
from saeuron.demo import DemoConfig, build_run  # noqa: E402
from saeuron.cli_args import parse_seeds  # noqa: E402
from saeuron.hooks import get_hookpoint  # noqa: E402
from saeuron.pipelines import load_pipeline  # noqa: E402

DEFAULT_HOOKPOINTS = ("down_blocks.2.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",  # minicanvas: 8 x 8
                      "up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--hookpoints", default=",".join(DEFAULT_HOOKPOINTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--tokens", type=int, default=1_500_000)
    p.add_argument("--percentile", type=float, default=99.7)
    args = p.parse_args()
    hookpoints = tuple(h.strip() for h in args.hookpoints.split(",") if h.strip())
    pipe = load_pipeline()
    widths = {h: get_hookpoint(pipe, h).width for h in hookpoints}  # a clear error for a bad name before anything runs
    build_run(args.run, DemoConfig(cache_seeds=tuple(parse_seeds(args.seeds)), sae_tokens=args.tokens), pipe, hookpoints)
    summary = {}
    for h in hookpoints:
        sae_dir = args.run / "saes" / h
        rows = selection_report(ConceptScores.load(sae_dir / "concepts.h5"), args.percentile)
        metrics = json.loads((sae_dir / "metrics.json").read_text())
        summary[h] = {"width": widths[h], "val_fvu": metrics.get("val_fvu")}
        for kind in ("style", "object"):
            sel = [r for r in rows if r["concept"].startswith(kind)]
            total = max(sum(r["selected"] for r in sel), 1)
            summary[h][kind] = {k: round(100 * sum(r[k] for r in sel) / total, 1) for k in ("exclusive", "specific")}
            summary[h][kind].update(concepts=len(sel), concepts_with_specific=sum(r["specific"] > 0 for r in sel))
    print("| hookpoint | width | val FVU | styles: exclusive / specific % | objects: exclusive / specific % | objects with a specific feature |")
    print("|---|---|---|---|---|---|")
    for h, s in summary.items():
        fvu = f"{s['val_fvu']:.3f}" if isinstance(s["val_fvu"], float) else "?"
        print(f"| `{h}` | {s['width']} | {fvu} | {s['style']['exclusive']} / {s['style']['specific']} | "
              f"{s['object']['exclusive']} / {s['object']['specific']} | {s['object']['concepts_with_specific']} / {s['object']['concepts']} |")
    (args.run / "probe_hookpoints.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
