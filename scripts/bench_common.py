"""What the bench scripts share: the method list parser, SAeUron's paper-faithful style setting and the attack table's cells."""

from __future__ import annotations

from pathlib import Path

from saeuron.demo import OBJECT_HOOKPOINT, STYLE_HOOKPOINT, DemoConfig, build_run
from saeuron.evaluate import paper_percentile

BENCH_HOOKPOINTS = (STYLE_HOOKPOINT, OBJECT_HOOKPOINT)  # the bench's two SAE sites (the demo adds cross-attention sites)


def parse_methods(text: str, valid: list[str]) -> list[str]:
    """A comma list of method names, each once, checked against `valid`."""
    methods = list(dict.fromkeys(m for m in text.split(",") if m))
    if unknown := [m for m in methods if m not in valid]:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(valid)}")
    return methods


def saeuron_paper_style(pipe, run: Path) -> tuple[str, list[str]]:
    """SAeUron's style SAE (built as bench_methods builds it: cache seeds 0-3) and the paper's style setting: 1 feature a
    step at this SAE's width, multiplier -1."""
    from saeuron.concepts import ConceptScores

    build_run(run, DemoConfig(cache_seeds=(0, 1, 2, 3), eval_seeds=(300, 301, 302, 303, 304)), pipe, BENCH_HOOKPOINTS)  # as bench_methods
    sae = run / "saes" / STYLE_HOOKPOINT
    width = ConceptScores.load(sae / "concepts.h5").scores.shape[-1]
    return str(sae), [f"percentile={paper_percentile(1, width)}", "multiplier=-1", "dominance=0"]


def attack_cells(row: dict, attacks: tuple[str, ...]) -> tuple[str, list[str], float, str]:
    """One (method, target) row of an attack bench's table: UA without attack, UA after each attack ('' where not run),
    the attacks' seconds and the thread counts they ran at."""
    done = [a for a in attacks if a in row]
    before = f"{row[done[0]]['UA_before']:.0f}" if done else ""
    return (before, [f"{row[a]['UA_after']:.0f}" if a in row else "" for a in attacks], sum(row[a]["seconds"] for a in done),
            "/".join(sorted({str(row[a].get("threads", "?")) for a in done})))
