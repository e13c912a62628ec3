"""The Gradio Space, started for real: the named API endpoint through gradio_client, and the page in Chromium.

Set GHIBLIGAN_SCREENSHOT_DIR to keep the browser screenshots (the README's comes from here).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from .helpers import photo_like

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "space" / "examples" / "cat.jpg"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("space") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "space" / "app.py"), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"the Space did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def bad_files(tmp_path):
    text = tmp_path / "holiday.png"
    text.write_text("not an image, whatever the name says")
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(photo_like(300, 200)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    return text, truncated


def test_api_endpoint_returns_a_png_of_the_input_size(server):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    assert "/cartoonize" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    path = client.predict(handle_file(str(EXAMPLE)), "bundled", 1024, 0.0, api_name="/cartoonize")
    with Image.open(path) as cartoon:
        assert cartoon.format == "PNG"  # lossless, not gradio's default webp
        assert cartoon.size == Image.open(EXAMPLE).size
    smaller = client.predict(handle_file(str(EXAMPLE)), "bundled", 256, 0.5, api_name="/cartoonize")
    assert max(Image.open(smaller).size) == 256


def test_api_bad_uploads_are_errors_and_the_server_keeps_serving(server, bad_files):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    for bad in bad_files:
        with pytest.raises(Exception, match="could not be used as a photo") as info:
            client.predict(handle_file(str(bad)), "bundled", 512, 0.0, api_name="/cartoonize")
        assert bad.name in str(info.value) and "/tmp" not in str(info.value)
    with pytest.raises(Exception, match="Could not load the model"):
        client.predict(handle_file(str(EXAMPLE)), "nobody/no-such-model", 512, 0.0, api_name="/cartoonize")
    path = client.predict(handle_file(str(EXAMPLE)), "bundled", 512, 0.0, api_name="/cartoonize")
    assert Image.open(path).format == "PNG"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it with apt")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("GHIBLIGAN_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def upload_and_run(page, path: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(path))
    page.locator("#run").click()


def test_browser_upload_click_and_result(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server)
    upload_and_run(page, EXAMPLE)
    result = page.locator("#result img")
    result.wait_for(state="visible", timeout=60_000)
    page.locator("#before_after img").first.wait_for(state="visible", timeout=30_000)  # the comparison step ran too
    assert page.locator("#before_after img").count() == 2  # before and after
    page.wait_for_timeout(500)
    assert page.get_by_text("Error").count() == 0
    page.screenshot(path=str(screenshot_path(tmp_path, "space.png")), full_page=True)
    natural = page.evaluate(
        "() => { const i = document.querySelector('#result img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert tuple(natural) == Image.open(EXAMPLE).size
    page.close()


def test_browser_bad_upload_shows_an_error_and_the_page_keeps_working(server, browser, bad_files, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server)
    text, _ = bad_files
    upload_and_run(page, text)
    error = page.get_by_text("could not be used as a photo").first
    error.wait_for(state="visible", timeout=60_000)
    assert "holiday.png" in error.inner_text()
    assert "Traceback" not in page.content()
    page.wait_for_timeout(300)  # let the toast finish sliding in before the screenshot
    page.screenshot(path=str(screenshot_path(tmp_path, "space-error.png")))
    page.goto(server)  # the server keeps serving: a good photo still works
    upload_and_run(page, EXAMPLE)
    page.locator("#result img").wait_for(state="visible", timeout=60_000)
    page.close()
