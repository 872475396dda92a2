"""The methods bench's table: one row per variant and machine, and the cells of a variant that changes one kind only."""

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
