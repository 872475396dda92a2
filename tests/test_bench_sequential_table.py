"""The sequential bench's table writer: rows of every method to SEQUENTIAL.md and one figure, resumable per step."""

import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_sequential  # noqa: E402


def _record(method: str, n_steps: int) -> dict:
    rows = [{"UA": 100.0 - 10 * k, "UA_first": 100.0, "IRA": 90.0 - k, "CRA": 80.0 - 2 * k} for k in range(n_steps)]
    return {"method": method, "rows": rows, "command": f"python scripts/bench_sequential.py --methods {method}",
            "machine": "cpu, 1 thread", "date": "2026-12-05", "eval_seeds": "300-304"}


def test_table_marks_missing_steps_and_draws_every_method(tmp_path):
    for method, n in (("uce", 6), ("spm", 2)):
        (tmp_path / f"{method}.json").write_text(json.dumps(_record(method, n)))
    out = tmp_path / "SEQUENTIAL.md"
    bench_sequential.write_table(tmp_path, out, list(range(300, 305)))
    lines = {line.split(" | ")[0]: line for line in out.read_text().splitlines() if line.startswith("| uce") or line.startswith("| spm")}
    assert lines["| uce"].count("not run") == 0
    assert "| 90 (100) / 89 / 78 |" in lines["| spm"] and lines["| spm"].count("not run") == 4
    assert "`python scripts/bench_sequential.py --methods spm`, cpu, 1 thread (2026-12-05)" in out.read_text()
    figure = Image.open(tmp_path / "all.png")
    assert figure.size[0] > 3 * figure.size[1] // 2
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
