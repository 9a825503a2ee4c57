"""The web view (/ui, docs/ui.md) in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) against a real server process with a token.

The stream: 1.5 s of audio, then its connection is reset (no close frame); 0.5 s later it
resumes, declares the lost 25 frames as a gap (8000 samples), sends 2 items twice (the
second time they are replays the server drops, §4), 1.5 s more, and ends. The page must
show the reset as a reconnecting interval, the replays, the gap with its exact length and
the end; its `<audio>` must have the stored duration and seek with a Range request; no
token in any URL; no console errors. A screenshot is kept (ECHOPANEL_ARTIFACTS: copied
there too).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ingest_server.client import FMT, FRAME, Client
from tests.support.server import IngestServer
from uplink.wire import Hello, Welcome, encode_control

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "ui-e2e-token-0123456789abcdef"
SID = "ui-demo-reset-and-gap"
RATE = FMT.sample_rate
FIRST, LOST, SECOND = 75, 25, 75  # frames: before the reset, lost in it, after it
TOTAL_FRAMES = FIRST + LOST + SECOND
GAP_SAMPLES = LOST * FRAME
WAIT = 20.0

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true: Debian's chromium and chromium-driver are required "
                           "(tools/dev.sh installs them)")
    pytest.skip("chromium / chromedriver not installed (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402 (only once chromium is known to be there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def tone(seq: int) -> bytes:
    """A 330 Hz tone whose loudness rises and falls over the stream: a level graph to see."""
    amplitude = 0.05 + 0.6 * abs(math.sin(math.pi * seq / TOTAL_FRAMES * 2))
    start = seq * FRAME
    return b"".join(struct.pack("<h", round(32767 * amplitude
                                            * math.sin(2 * math.pi * 330 * (start + i) / RATE)))
                    for i in range(FRAME))


def paced(c: Client, seqs: range, t0: float) -> None:
    """Send frames as a live capture would (each once its capture time has come), so the
    connection timeline and the audio's capture time line up in the picture."""
    for seq in seqs:
        delay = t0 + seq * FRAME / RATE - time.time()
        if delay > 0:
            time.sleep(delay)
        c.audio(seq, seq * FRAME, [tone(seq)])
    c.wait_acked(seqs.stop)


def make_stream(server: IngestServer) -> None:
    t0 = time.time()
    with Client(server.url, TOKEN) as c:
        c.send(encode_control(Hello(SID, FMT, FRAME, wall_time=t0)))
        welcome = c.recv()
        assert isinstance(welcome, Welcome)
        paced(c, range(0, FIRST), t0)
        c.ws.socket.close()  # a reset: no close frame
    outage_over = t0 + (FIRST + LOST) * FRAME / RATE
    time.sleep(max(0.0, outage_over - time.time()))  # pacing: the outage lasts 0.5 s
    with Client(server.url, TOKEN) as c:
        c.hello(SID, resume=welcome)
        c.gap(FIRST, LOST, FIRST * FRAME, (FIRST + LOST) * FRAME)  # what the buffer lost
        resumed_at = FIRST + LOST
        paced(c, range(resumed_at, resumed_at + 2), t0)
        for seq in (resumed_at, resumed_at + 1):  # replays: dropped and counted (§4)
            c.audio(seq, seq * FRAME, [tone(seq)])
        paced(c, range(resumed_at + 2, TOTAL_FRAMES), t0)
        c.end(TOTAL_FRAMES, TOTAL_FRAMES * FRAME)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IngestServer]:
    with IngestServer(tmp_path / "data", args=["--token", TOKEN,
                                               "--profile", "development"]) as srv:
        yield srv


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # As root in a container, and quiet: nothing but the page may use the network.
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1100",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def network_requests(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Every request the page made (DevTools Network events), with its response status."""
    sent: dict[str, dict[str, Any]] = {}
    for record in driver.get_log("performance"):
        message = json.loads(record["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            req = params["request"]
            sent[params["requestId"]] = {"url": req["url"], "headers": req["headers"],
                                         "method": req["method"], "status": None}
        elif message["method"] == "Network.responseReceived" and params["requestId"] in sent:
            sent[params["requestId"]]["status"] = params["response"]["status"]
        elif message["method"] == "Network.requestWillBeSentExtraInfo" and \
                params["requestId"] in sent:
            sent[params["requestId"]]["headers"].update(params.get("headers", {}))
    return list(sent.values())


def test_the_web_view_shows_the_reset_the_replays_and_the_gap(
        server: IngestServer, browser: webdriver.Chrome, tmp_path: Path) -> None:
    make_stream(server)
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{server.http}/ui/")

    # The token, entered once, goes to session storage (never into a URL).
    form = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="token-form"]'))
    wait.until(lambda d: form.is_displayed())
    browser.find_element(By.CSS_SELECTOR, '[data-testid="token-input"]').send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, '[data-testid="token-submit"]').click()
    row = wait.until(lambda d: d.find_element(
        By.CSS_SELECTOR, f'[data-testid="stream-row"][data-stream-id="{SID}"]'))
    assert "finalized (ended)" in row.text and "16000 Hz" in row.text
    assert browser.execute_script("return sessionStorage.getItem('echopanel.token')") == TOKEN

    row.find_element(By.TAG_NAME, "a").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stream-view"]')
               .get_attribute("data-ready") == "true")

    def testids(name: str) -> list[Any]:
        return browser.find_elements(By.CSS_SELECTOR, f'[data-testid="{name}"]')

    # The timeline: the reset as a reconnecting interval between two connected ones, the
    # replays at the second connection, the gap with its exact length, the end.
    assert len(testids("segment-connected")) == 2
    assert len(testids("segment-reconnecting")) == 1
    assert [m.get_attribute("data-count") for m in testids("replay-marker")] == ["2"]
    assert [g.get_attribute("data-samples") for g in testids("gap-block")] == [str(GAP_SAMPLES)]
    timeline = browser.find_element(By.CSS_SELECTOR, '[data-testid="timeline"]')
    assert f"gap {GAP_SAMPLES} samples (500.0 ms)" in timeline.text
    assert len(testids("final-mark")) == 1 and "ended" in testids("final-mark")[0].text
    gaps = testids("gap")
    assert len(gaps) == 1 and f"{GAP_SAMPLES} samples (500.0 ms)" in gaps[0].text
    kinds = [r.get_attribute("data-kind") for r in testids("history-row")]
    assert kinds[:3] == ["connected", "disconnected", "connected"] and "gap" in kinds
    assert "finalized" in kinds
    assert len(browser.find_elements(By.CSS_SELECTOR, "#levels polyline")) >= 1

    # The audio: the stored duration, and seeking works through a Range request.
    duration = TOTAL_FRAMES * FRAME / RATE
    got = wait.until(lambda d: d.execute_script(
        "const a = document.getElementById('player');"
        "return a.readyState >= 1 && isFinite(a.duration) ? a.duration : null"))
    assert abs(got - duration) < 1e-3
    seeked = browser.execute_async_script(
        "const done = arguments[0]; const a = document.getElementById('player');"
        "a.addEventListener('seeked', () => done([a.currentTime, a.seekable.end(0)]),"
        " {once: true}); a.currentTime = 2.75;")
    assert abs(seeked[0] - 2.75) < 1e-3 and abs(seeked[1] - duration) < 1e-3

    screenshot = tmp_path / "ui-stream.png"
    browser.save_screenshot(str(screenshot))
    artifacts = os.environ.get("ECHOPANEL_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
        print(f"screenshot: {Path(artifacts) / screenshot.name}")
    else:
        print(f"screenshot: {screenshot}")

    requests = network_requests(browser)
    audio = [r for r in requests if f"/v1/ui/streams/{SID}/audio.wav" in r["url"]]
    ranged = [r for r in audio if any(k.lower() == "range" for k in r["headers"])]
    assert ranged and {r["status"] for r in ranged} <= {206, None}
    assert 206 in {r["status"] for r in ranged}
    assert all(TOKEN not in r["url"] for r in requests)  # never in a URL (§10)
    api_calls = [r for r in requests if "/v1/streams" in r["url"]]
    assert api_calls and all(r["headers"].get("Authorization") == f"Bearer {TOKEN}"
                             for r in api_calls)

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
