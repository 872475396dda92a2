"""The methods bench: its table (one row per variant and machine, the cells of a variant that changes one kind only) and
its tuning beside fixed SAE sites."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_methods  # noqa: E402


def _rows(targets: list[str], machine: str, ua: float) -> dict:
    return {t: {"UA": ua, "IRA": 90.0, "CRA": 99.0, "frechet": 1.0, "changed": 2.0, "wall_time_s": 0.1, "storage_mb": 0.9,
                "machine": machine} for t in targets}


def test_a_variant_on_two_machines_keeps_both_rows_and_a_rerun_replaces_its_own(tmp_path):
    styles, objects = bench_methods.TARGETS[:3], bench_methods.TARGETS[3:]
    entries = [("saeuron-paper", {"targets": _rows(styles + objects, "GPU", 90.0), "time_ratio": 1.0}),
               ("uce", {"targets": _rows(objects, "CPU", 99.0), "time_ratio": 1.0}),
               ("saeuron-paper-xattn", {"targets": _rows(objects, "CPU", 95.0), "time_ratio": 1.7}),
               ("saeuron-paper", {"targets": _rows(objects, "CPU", 70.0), "time_ratio": 1.0}),
               ("saeuron-paper", {"targets": _rows(objects, "CPU", 80.0), "time_ratio": 1.0})]  # a rerun on the CPU
    table = bench_methods.table_rows(entries)
    assert [name for name, _ in table] == ["saeuron-paper", "saeuron-paper", "saeuron-paper-xattn", "uce"]
    assert {t["targets"]["object:star"]["UA"] for name, t in table if name == "saeuron-paper"} == {90.0, 80.0}

    out = tmp_path / "METHODS.md"
    args = argparse.Namespace(tune_seeds="100-101", cache_seeds="0-3", jobs=1, with_results=[], attacks=tmp_path / "none.json")
    bench_methods.write_markdown(out, table, args, list(range(300, 305)))
    main_table = out.read_text().split("Per target")[0]
    lines = {line.split(" | ")[0]: line for line in main_table.splitlines() if line.startswith("| saeuron-paper")}
    # machines sorted: [1] CPU, [2] GPU; the CPU's saeuron-paper ran objects only, so its style cells were not run
    assert lines["| saeuron-paper [2]"].split(" | ")[1:7] == ["90.0", "90.0", "99.0"] * 2
    assert lines["| saeuron-paper [1]"].split(" | ")[1:4] == ["not run"] * 3
    assert lines["| saeuron-paper [1]"].split(" | ")[4] == "80.0"
    # the cross-attention variant changes objects only: its style cells are saeuron-paper's
    assert lines["| saeuron-paper-xattn [1]"].split(" | ")[1:4] == ["as saeuron-paper"] * 3
    assert lines["| saeuron-paper-xattn [1]"].split(" | ")[4] == "95.0"


def test_a_site_tuned_beside_fixed_sites_samples_them_all_in_one_pass(tiny_run, minicanvas_pipe):
    """`WithFixedSites` is the tuned site alone when no other site is given, and adds the others' edits when one is."""
    import torch

    from conftest import TINY_HOOKPOINT
    from saeuron.ablate import load_ablation_site
    from saeuron.pipelines import SamplerConfig

    site = load_ablation_site(tiny_run / "saes" / TINY_HOOKPOINT)
    fast, prompts, seeds = SamplerConfig(steps=3), ["a star in neon style", "a ring in ocean style"], [5, 5]
    setting = {"style:neon": {"percentile": 99.0, "multiplier": -5.0, "dominance": 0.0, "start": 0.0}}
    alone = site.sample(minicanvas_pipe, site.plan(["style:neon"], params=setting), prompts, seeds, fast)
    wrapped = bench_methods.WithFixedSites(site, [])
    assert torch.equal(wrapped.sample(minicanvas_pipe, wrapped.plan(["style:neon"], setting), prompts, seeds, fast), alone)
    # a second, fixed site with more features acts in the same pass
    wide = {"percentile": 90.0, "multiplier": -20.0, "dominance": 0.0, "start": 0.0}
    both = bench_methods.WithFixedSites(site, [(site, wide)])
    edits = both.plan(["style:neon"], setting)
    assert [e[1] for e in edits] == [TINY_HOOKPOINT] * 2 and edits[1][2].n_features() > edits[0][2].n_features()
    assert not torch.allclose(both.sample(minicanvas_pipe, edits, prompts, seeds, fast), alone, atol=1e-3)


def test_variant_tables_name_known_variants_and_a_changed_kind_is_never_borrowed():
    b = bench_methods
    for table in (b.TUNE_SEEDS, b.GRID_CHANGES, b.EXTRA_SITES, b.TUNED_AS):
        assert set(table) <= set(b.VARIANTS), set(table) - set(b.VARIANTS)
    assert set(b.TUNED_AS.values()) <= set(b.VARIANTS)
    assert set(b.VARIANTS) <= set(b.COST_ORDER)  # each variant has its place in the parallel jobs' order
    # saeuron-xattn-t5 changes objects (their tuning seeds and sites) only: its styles, whose setting is fixed, are the
    # paper row's; saeuron-paper-t5 changes the tuning of the paper's object grid
    assert b.not_run("saeuron-xattn-t5", "style") == "as saeuron-paper"
    assert b.not_run("saeuron-xattn-t5", "object") == "not run"
    assert b.not_run("saeuron-paper-t5", "object") == "not run"
    assert b.not_run("saeuron-xattn", "style") == "as saeuron-paper"
    assert b.not_run("saeuron-xattn", "object") == "not run"
