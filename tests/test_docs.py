"""The documentation site builds strictly (broken links, missing references and notebook errors fail it), with
its tutorial executed, and its home page and tutorial open in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_and_its_pages_open_in_chromium(tmp_path):
    from playwright import sync_api

    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    home, tutorial = site / "index.html", site / "tutorials" / "first-classifier" / "index.html"
    assert home.exists() and tutorial.exists()
    options = (site / "reference" / "config" / "index.html").read_text()
    assert "finetune_momentum" in options and "Speed and numerics" in options  # generated from RunConfig
    assert "astroclass data import sky" in (site / "reference" / "cli" / "index.html").read_text()
    assert "Classifier" in (site / "reference" / "api" / "index.html").read_text()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "the browser test needs Debian chromium (apt-get install chromium)"
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(home.as_uri())
        assert "Classify a survey catalogue" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "home.png"))
        page.goto(tutorial.as_uri())
        body = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "tutorial.png"), full_page=True)
        images = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
                               ".map(i => i.complete && i.naturalWidth > 0)")
        browser.close()
    # the executed tutorial: the epoch lines, the run's metrics and its learning curve and contact sheet
    assert "[efficientnet_lite0 finetune   2]" in body and "balanced accuracy" in body and "Traceback" not in body
    assert len(images) >= 2 and all(images)
    assert errors == []
