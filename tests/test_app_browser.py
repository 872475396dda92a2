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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_browse_feature_and_ablate(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(served_app)
            expect(page.get_by_text("Statistics over", exact=False)).to_be_visible(timeout=150_000)
            expect(page.get_by_text("SAE with 256 features", exact=False)).to_be_visible()

            box = page.get_by_label("Feature id")
            box.fill("5")
            box.press("Enter")
            expect(page.get_by_role("heading", name="Feature 5", exact=True)).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Activation histogram", exact=False).first).to_be_attached(timeout=60_000)
            page.screenshot(path=str(tmp_path / "features.png"), full_page=True)

            page.get_by_text("Ablate", exact=True).click()
            expect(page.get_by_role("button", name="Run ablation")).to_be_visible(timeout=60_000)
            steps = page.get_by_label("Sampler steps")
            steps.fill("10")
            steps.press("Enter")
            feats = page.get_by_label("and/or feature ids (comma separated)")
            feats.fill("1, 2")
            feats.press("Enter")
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Run ablation").click()
            expect(page.get_by_text("Ablated: a circle in sunset style · seed 0", exact=False)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("ablated feature 1, feature 2", exact=False)).to_be_visible()
            expect(page.get_by_text("Original: a circle in sunset style · seed 0 → classifier:", exact=False)).to_be_visible()
            shot = tmp_path / "ablate.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert "Traceback" not in page.content()
        finally:
            browser.close()
