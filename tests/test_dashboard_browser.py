"""End to end: ``streamlit run dashboards/app.py`` on 127.0.0.1, every page in headless Chromium.

Needs ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``).
Without them the test skips, except in CI (``CI=true``), where it fails. Screenshots go to
``test-artifacts/dashboard-<page>.png``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.dashboard_fixture import DashboardStore, think_snippet

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CI = os.environ.get("CI") == "true"


def _find(name: str, fallback: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return fallback if Path(fallback).is_file() else None


CHROMIUM = _find("chromium", "/usr/bin/chromium")
CHROMEDRIVER = _find("chromedriver", "/usr/bin/chromedriver")
MISSING = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]

if MISSING and not CI:
    pytest.skip(f"{' and '.join(MISSING)} not installed (apt-get install chromium "
                "chromium-driver); CI=true makes this a failure", allow_module_level=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def store(dashboard_store: DashboardStore) -> DashboardStore:
    return dashboard_store


@contextlib.contextmanager
def _serve(db_url: str, covers: Path, log: Path) -> Iterator[str]:
    """``vragent dashboard --db URL --port P`` (the real command), stopped with SIGTERM."""
    port = _free_port()
    exe = Path(sys.executable).parent / "vragent"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "vragent.sandbox.cli"]
    cmd = [*cli, "dashboard", "--db", db_url, "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "VRAGENT_DB"}
    env |= {"VRAGENT_COVERS_DIR": str(covers), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health:\n{log.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()  # SIGTERM: the command passes it on to the Streamlit server
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        deadline = time.monotonic() + 15
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _listening(port):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the Streamlit server outlived `vragent dashboard`")


@pytest.fixture(scope="module")
def server(store: DashboardStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with _serve(store.url, store.covers, log) as base:
        yield base


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-quic", "--window-size=1280,900"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _main_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text


def _open(driver, url: str, title: str, expect: tuple[str, ...] = (),
          timeout: float = 60) -> str:
    """Open a page, wait for its run to end and for ``expect`` to show; return the text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), title))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]')
               .get_attribute("data-test-script-state") == "notRunning")
    try:
        wait.until(lambda d: all(e in _main_text(d) for e in expect))
    except TimeoutException:
        text = _main_text(driver)
        missing = [e for e in expect if e not in text]
        pytest.fail(f"{url}: {missing} not on the page:\n{text}")
    return _main_text(driver)


def _grid_text(driver) -> str:
    """The cells of the page's data frames (drawn on a canvas; read from the a11y table)."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td')
    return "\n".join(c.get_attribute("textContent") or "" for c in cells)


def _wait_for(driver, css: str, count: int = 1, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)


def _shot(driver, page: str) -> None:
    """Screenshot of the whole page (the window grows to the content's height)."""
    ARTIFACTS.mkdir(exist_ok=True)
    time.sleep(0.5)  # let charts and data grids paint
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]');"
        "return Math.max(900, m ? m.scrollHeight + 80 : 900);")
    driver.set_window_size(1280, min(int(height), 6000))
    time.sleep(0.5)
    driver.save_screenshot(str(ARTIFACTS / f"dashboard-{page}.png"))
    driver.set_window_size(1280, 900)


def _click_label(driver, text: str) -> None:
    """Click the toggle or checkbox whose label contains ``text``, and wait for the rerun."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    label = next(e for e in driver.find_elements(By.CSS_SELECTOR, "label")
                 if text in (e.text or ""))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", label)
    label.click()
    time.sleep(0.5)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]')
        .get_attribute("data-test-script-state") == "notRunning")


def _pick_a_user_by_clicking_its_row(driver, server: str, run_id: str) -> None:
    """A click on a row of the users table opens that user's trace."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, f"{server}/traces?{urlencode({'run': run_id, 'arm': 'cooc'})}",
          "Trace explorer", ("Find a user",))
    _wait_for(driver, '[data-testid="stDataFrame"] td', 6)
    grid = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')[0]
    rows = grid.find_elements(By.CSS_SELECTOR, "tbody tr")
    third = rows[2].find_elements(By.CSS_SELECTOR, "td")
    user = next(c.get_attribute("textContent") for c in third
                if (c.get_attribute("textContent") or "").strip().isdigit())
    header = 35  # the grid's header row, then 35-pixel rows (Streamlit's defaults)
    ActionChains(driver).move_to_element_with_offset(
        grid, -grid.size["width"] // 2 + 12, -grid.size["height"] // 2 + header + 35 * 2 + 17
    ).click().perform()
    WebDriverWait(driver, 30).until(
        lambda d: any(h.text == f"User {user}" for h in d.find_elements(By.CSS_SELECTOR, "h3")))


def test_every_page_in_a_browser(server: str, driver, store: DashboardStore) -> None:
    from selenium.webdriver.common.by import By

    traced, second = store.runs

    _open(driver, f"{server}/", "Runs", ("Open a run", "finished", "3/3", "Per arm"))
    assert driver.current_url.rstrip("/").endswith("/runs")  # the root opens /runs
    _open(driver, f"{server}/runs", "Runs", ("Open a run", "finished", "3/3", "Per arm"))
    menu = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
    assert all(t in menu for t in ("Runs", "A/B", "Trace explorer", "Feedback loops", "Items",
                                   "Training")) and "Home" not in menu
    _wait_for(driver, '[data-testid="stDataFrame"] td', 2)
    cells = _grid_text(driver)
    assert traced in cells and second in cells and "popular, cooc, random" in cells
    _shot(driver, "runs")

    _open(driver, f"{server}/ab", "A/B", ("Per-arm metrics", "Arms against the baseline",
                                          "popular", "Over steps", "Benjamini–Hochberg",
                                          "Smoothing", "Log scale"))
    _wait_for(driver, '[data-testid="stVegaLiteChart"]', 2)
    _shot(driver, "ab")

    query = urlencode({"run": traced, "arm": "popular", "user": store.traced_user})
    snippet = think_snippet(store.think)
    assert snippet
    _open(driver, f"{server}/traces?{query}", "Trace explorer",
          (f"User {store.traced_user}", "Step 0", "think", "answer", snippet,
           "End of the slate — ", "a separate generation, stored for inspection",
           "Only decisions with a stored reasoning", "Text in a reasoning"))
    _wait_for(driver, '[data-testid="stDataFrame"] td', 4)
    assert any(label in _grid_text(driver) for label in ("↷ skip", "▶ watch", "❤ like"))
    assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"]')
    _shot(driver, "traces")
    _click_label(driver, "This user in every arm, side by side")
    _wait_for(driver, '[data-testid="stDataFrame"]', 1 + 3 * 3)  # users, then steps × arms
    _shot(driver, "traces-arms")
    _pick_a_user_by_clicking_its_row(driver, server, traced)

    _open(driver, f"{server}/feedback", "Feedback loops", ("Source", "Lorenz"))
    _wait_for(driver, '[data-testid="stVegaLiteChart"]', 3)
    n_charts = len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]'))
    _click_label(driver, "Read every impression")
    _wait_for(driver, '[data-testid="stVegaLiteChart"]', n_charts + 1)  # the Lorenz curve
    _shot(driver, "feedback")

    _open(driver, f"{server}/items", "Items", ("Stage by stage", "perception", "original title"))
    _wait_for(driver, '[data-testid="stImage"]')
    _shot(driver, "items")

    _open(driver, f"{server}/training", "Training", ("Training runs", "Policy evaluations"))
    _wait_for(driver, '[data-testid="stVegaLiteChart"]', 2)
    assert "fixture-users" in _grid_text(driver)
    _shot(driver, "training")

    for page in ("runs", "ab", "traces", "traces-arms", "feedback", "items", "training"):
        assert (ARTIFACTS / f"dashboard-{page}.png").stat().st_size > 10_000


@contextlib.contextmanager
def _pixel_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request (the payloads' target)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_outside_text_stays_text_in_a_browser(driver, store: DashboardStore,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hostile titles, personas, completions, tags, errors and names, every page, in Chromium.

    The payloads point at a recording server on 127.0.0.1: no page may fetch from it, link to
    it, colour or typeset anything; each page shows the payload as literal text.
    """
    from selenium.webdriver.common.by import By

    from tests.dashboard_fixture import hostile_copy

    folder = tmp_path_factory.mktemp("hostile")
    with _pixel_server() as (port, hits):
        evil = hostile_copy(store, folder, port)
        with _serve(evil.url, evil.covers, folder / "server.log") as base:
            query = urlencode({"run": evil.runs[0], "arm": "popular", "user": evil.traced_user})
            pages = [("runs", "", "Runs", True), ("ab", "ab", "A/B", True),
                     ("traces", f"traces?{query}", "Trace explorer", True),
                     ("feedback", "feedback", "Feedback loops", False),
                     ("items", "items", "Items", True), ("training", "training", "Training", False)]
            for name, path, title, shows in pages:
                text = _open(driver, f"{base}/{path}", title,
                             (":red[RED] $x^2$",) if shows else ())
                made = driver.find_elements(
                    By.CSS_SELECTOR, f'img[src*=":{port}"], a[href*=":{port}"], .katex, '
                                     '[data-testid="stMarkdown"] strong')
                made = [e for e in made if "bold" in (e.text or "") or e.tag_name != "strong"]
                assert not made, (name, [e.get_attribute("outerHTML")[:200] for e in made])
                if shows:
                    assert f"![pixel](http://127.0.0.1:{port}/pixel.png)" in text, name
                _shot(driver, f"hostile-{name}")
            icons = [e.get_attribute("href") or "" for e in
                     driver.find_elements(By.CSS_SELECTOR, 'link[rel~="icon"]')]
            assert icons and all(h.startswith(base) for h in icons), icons
        time.sleep(1.0)
    assert hits == [], f"the pages fetched {hits}"
