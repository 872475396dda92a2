"""The explorer served by `streamlit run` and driven in headless Chromium (playwright): select a feature, ablate."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_app import APP, build_app_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, minicanvas_pipe):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    run = build_app_run(tmp_path_factory.getbasetemp() / "app_run", minicanvas_pipe)
    port = _free_port()
    log = open(tmp_path_factory.mktemp("streamlit") / "server.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", SAEURON_RUN=str(run))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none", "--", str(run)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.5)
        yield url, run
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _shot(page, tmp_path, name: str) -> Path:
    """A full-page screenshot (into $SAEURON_SHOTS when set, to look at them)."""
    folder = Path(os.environ.get("SAEURON_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _click_row(page, table, row: int) -> None:
    """Click the row marker (left edge) of a row of an st.dataframe (a canvas grid: rows by position)."""
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    header, height = 35, 35  # the grid's default header and row heights
    page.mouse.click(box["x"] + 12, box["y"] + header + height * (row + 0.5))


def _table_order(run: Path) -> list[int]:
    """The feature ids of the Features page's table as first shown (sorted by frequency)."""
    from saeuron.app import feature_stats, feature_table
    from saeuron.concepts import ConceptScores
    from saeuron.sae import load_sae
    from test_app import HP

    stats = feature_stats(run / "cache.h5", HP, load_sae(run / "saes" / HP, hookpoint=HP))
    table = feature_table(stats, ConceptScores.load(run / "saes" / HP / "concepts.h5"))
    return table.sort_values("frequency", ascending=False).head(50)["feature"].tolist()


def test_browse_feature_and_ablate(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    import numpy as np

    from saeuron.concepts import ConceptScores
    from test_app import HP

    url, run = served_app
    order = _table_order(run)
    scores = ConceptScores.load(run / "saes" / HP / "concepts.h5")
    best = int(np.argsort(-scores.scores[0].max(0), kind="stable")[0])  # the top feature of the first concept
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url)
            expect(page.get_by_text("Statistics over", exact=False)).to_be_visible(timeout=150_000)
            expect(page.get_by_text("SAE with 256 features", exact=False)).to_be_visible()
            expect(page.get_by_role("heading", name=f"Feature {order[0]}", exact=True)).to_be_visible(timeout=60_000)

            # a feature is chosen by clicking its row; the id box follows
            _click_row(page, page.get_by_test_id("stDataFrame").first, 2)
            expect(page.get_by_role("heading", name=f"Feature {order[2]}", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_label("Feature id")).to_have_value(str(order[2]))
            box = page.get_by_label("Feature id")  # typing an id still works
            box.fill("5")
            box.press("Enter")
            expect(page.get_by_role("heading", name="Feature 5", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Activation histogram", exact=False).first).to_be_attached(timeout=60_000)
            page.wait_for_timeout(1000)
            _shot(page, tmp_path, "features")

            page.get_by_text("Concepts", exact=True).click()
            expect(page.get_by_text("best feature overall", exact=False)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Top features of", exact=False)).to_be_visible()
            page.wait_for_timeout(1500)
            _shot(page, tmp_path, "concepts")
            # clicking a feature of the concept opens it on the Features page
            _click_row(page, page.get_by_test_id("stDataFrame").last, 0)
            expect(page.get_by_text("Statistics over", exact=False)).to_be_visible(timeout=60_000)
            expect(page.get_by_role("heading", name=f"Feature {best}", exact=True)).to_be_visible(timeout=60_000)

            page.get_by_text("Ablate", exact=True).click()
            expect(page.get_by_role("button", name="Run ablation")).to_be_visible(timeout=60_000)
            steps = page.get_by_label("Sampler steps")
            steps.fill("2")
            steps.press("Enter")
            feats = page.get_by_label("and/or feature ids (comma separated)")
            feats.fill("1, 2")
            feats.press("Enter")
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Run ablation").click()
            expect(page.get_by_text("Ablated: a circle in sunset style · seed 0", exact=False)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("ablated feature 1, feature 2", exact=False)).to_be_visible()
            expect(page.get_by_text("Original: a circle in sunset style · seed 0 → classifier:", exact=False)).to_be_visible()
            page.get_by_role("button", name="Erase everywhere", exact=False).click()
            expect(page.get_by_text("Everywhere", exact=False).first).to_be_visible(timeout=180_000)
            expect(page.get_by_text("before (base model)", exact=False)).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1000)
            _shot(page, tmp_path, "ablate")
            assert "Traceback" not in page.content()
        finally:
            browser.close()
