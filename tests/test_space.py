"""The Gradio Space, started for real: the named API endpoint through gradio_client, and the page in Chromium.

Set GHIBLIGAN_SCREENSHOT_DIR to keep the browser screenshots (the README's comes from here).
"""

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ghibligan.metrics import flat_share
from ghibligan.pipeline import bundled_model_path

from .helpers import STYLES, photo_like, save_tiny_style_model, save_tiny_unet

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


ALLOWED = "bundled,nobody/no-such-model"  # the second cannot load offline: a cached failure
BUNDLED_STYLES = json.loads((bundled_model_path() / "config.json").read_text()).get("styles") or []
# what the Space names a cartoon of cat.jpg made by the bundled model in its default style
CAT_OUTPUT = f"cat-{'ghibli' if 'ghibli' in BUNDLED_STYLES else (BUNDLED_STYLES or ['cartoon'])[0]}.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The Space serving the bundled model, one that cannot load, and two the operator trained: a tiny random
    3-style `GuidedFilterGenerator` (``server.styled``) and a tiny U-Net without styles (``server.plain``)."""
    port = free_port()
    folder = tmp_path_factory.mktemp("space")
    log = folder / "server.log"
    styled = str(save_tiny_style_model(folder / "styled"))
    plain = str(save_tiny_unet(folder / "plain"))
    allowed = f"{ALLOWED},{styled},{plain}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GHIBLIGAN_MODELS": allowed}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "space" / "app.py"), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
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
    yield SimpleNamespace(url=url, process=process, log=log, allowed=allowed.split(","), styled=styled, plain=plain)
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


def rss_mb(process: subprocess.Popen) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def refusals(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "refused:" in line]


def raw_call(url: str, data: list) -> str:
    """POST to the named endpoint over plain HTTP, as a script would, and return the event stream's text."""
    import httpx

    event = httpx.post(f"{url}gradio_api/call/cartoonize", json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/cartoonize/{event}", timeout=60).text


def test_api_endpoint_returns_a_png_named_after_the_upload(server):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/cartoonize"]
    assert api["parameters"][1]["type"]["enum"] == server.allowed  # the schema lists the operator's models
    assert api["parameters"][4]["parameter_has_default"]  # the style: callers of the 4-argument API still work
    path = client.predict(handle_file(str(EXAMPLE)), "bundled", 1024, 0.0, api_name="/cartoonize")
    assert Path(path).name == CAT_OUTPUT
    with Image.open(path) as cartoon:
        assert cartoon.format == "PNG"  # lossless, not gradio's default webp
        assert cartoon.size == Image.open(EXAMPLE).size
    smaller = client.predict(handle_file(str(EXAMPLE)), "bundled", 256, 0.5, api_name="/cartoonize")
    assert max(Image.open(smaller).size) == 256


def test_api_bad_uploads_are_one_message_and_one_log_line_each(server, bad_files):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    before, log_start = len(refusals(server.log)), len(server.log.read_text())
    for bad in bad_files:
        with pytest.raises(Exception, match="could not be used as a photo") as info:
            client.predict(handle_file(str(bad)), "bundled", 512, 0.0, api_name="/cartoonize")
        assert bad.name in str(info.value) and "/tmp" not in str(info.value)
    lines = refusals(server.log)[before:]
    assert len(lines) == len(bad_files) and all(bad.name in line for bad, line in zip(bad_files, lines, strict=True))
    assert "Traceback" not in server.log.read_text()[log_start:]
    path = client.predict(handle_file(str(EXAMPLE)), "bundled", 512, 0.0, api_name="/cartoonize")
    assert Image.open(path).format == "PNG"


def test_hostile_models_and_arguments_are_refused_at_once_and_memory_stays_flat(server, tmp_path):
    """The adversarial cases of issue 17: an uploaded config folder, server paths and unknown ids in the model box,
    out-of-range sizes and smoothing. Each is refused with one message and one log line, nothing is loaded (the
    server's RSS does not grow), and a request queued behind them is served."""
    import httpx
    from gradio_client import Client, handle_file

    hostile = tmp_path / "config.json"
    hostile.write_text('{"_class_name": "UNetGenerator", "ngf": 300}')  # 44 bytes that used to cost 5 GB
    with open(hostile, "rb") as file:
        uploaded = httpx.post(f"{server.url}gradio_api/upload", files=[("files", ("config.json", file))]).json()[0]
    client = Client(server.url, verbose=False)
    photo = handle_file(str(EXAMPLE))
    client.predict(photo, "bundled", 512, 0.0, api_name="/cartoonize")  # warm: RSS after a real request
    rss_before, logged_before = rss_mb(server.process), len(refusals(server.log))
    log_start = len(server.log.read_text())

    not_served = f"Choose one of the models this Space serves: {', '.join(server.allowed)}."
    cases = [
        ((str(Path(uploaded).parent), 512, 0.0), not_served),
        (("/etc", 512, 0.0), not_served),
        (("/root", 512, 0.0), not_served),
        (("you/unknown-model", 512, 0.0), not_served),
        (("nobody/no-such-model", 512, 0.0), "The model 'nobody/no-such-model' is not available right now"),
        (("bundled", 100000, 0.0), "Output size must be a whole number of pixels from 256 to 2048; got '100000'"),
        (("bundled", 20.7, 0.0), "Output size must be a whole number of pixels from 256 to 2048; got '20.7'"),
        (("bundled", "abc", 0.0), "Output size must be a whole number of pixels from 256 to 2048; got 'abc'"),
        (("bundled", 512, 5), "Smoothing must be a number from 0 to 1; got '5'"),
        (("bundled", 512, -0.5), "Smoothing must be a number from 0 to 1; got '-0.5'"),
    ]
    jobs = [client.submit(photo, *args, api_name="/cartoonize") for args, _ in cases]
    queued = client.submit(photo, "bundled", 512, 0.0, api_name="/cartoonize")  # behind all of them
    for job, (args, message) in zip(jobs, cases, strict=True):
        with pytest.raises(Exception) as info:
            job.result(timeout=60)
        assert str(info.value) == message or message in str(info.value), (args, str(info.value))
        assert "Traceback" not in str(info.value) and "/etc" not in str(info.value)
    assert Path(queued.result(timeout=60)).name == CAT_OUTPUT

    assert len(refusals(server.log)) - logged_before == len(cases)  # one line each
    assert "Traceback" not in server.log.read_text()[log_start:]
    assert rss_mb(server.process) - rss_before < 100, "a refused request allocated memory"
    stream = raw_call(
        server.url, [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, "bundled", 512, 0, "", False]
    )
    assert "event: error" in stream and "could not be used as a photo" in stream and "/tmp" not in stream


def wait_until_loaded(client, model: str) -> None:
    """The operator's models load in the background: wait (briefly) until ``model`` answers."""
    deadline = time.time() + 60
    while True:
        try:
            client.predict(handle_example(), model, 256, 0.0, api_name="/cartoonize")
            return
        except Exception as error:
            if "still loading" not in str(error) or time.time() > deadline:
                raise
            time.sleep(0.5)


def handle_example():
    from gradio_client import handle_file

    return handle_file(str(EXAMPLE))


def test_api_style_is_checked_against_the_chosen_model_and_names_the_output(server):
    """A style model's styles give different cartoons named after the style; an unknown style, a style for a model
    without styles, and a non-string are each one visitor-facing message and one log line."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/cartoonize"]
    assert parameters["parameters"][4]["parameter_default"] == ""  # left out: each model's default, plain ones too
    wait_until_loaded(client, server.styled)  # (it leaves the style out)
    paths = {
        style: client.predict(handle_example(), server.styled, 256, 0.0, style, api_name="/cartoonize")
        for style in STYLES
    }
    assert {style: Path(path).name for style, path in paths.items()} == {s: f"cat-{s}.png" for s in STYLES}
    pixels = {style: np.asarray(Image.open(path), dtype=np.int16) for style, path in paths.items()}
    assert (
        np.abs(pixels["ghibli"] - pixels["toon"]).mean() > 2 and np.abs(pixels["toon"] - pixels["painterly"]).mean() > 2
    )
    default = client.predict(handle_example(), server.styled, 256, 0.0, "", api_name="/cartoonize")
    assert Path(default).name == "cat-ghibli.png"  # "" is the model's default: ghibli, when it has it
    assert np.array_equal(np.asarray(Image.open(default), dtype=np.int16), pixels["ghibli"])
    wait_until_loaded(client, server.plain)
    plain = client.predict(handle_example(), server.plain, 256, 0.0, "", api_name="/cartoonize")
    assert Path(plain).name == "cat-cartoon.png"

    before, log_start = len(refusals(server.log)), len(server.log.read_text())
    cases = [
        (
            (server.styled, "pixel_art"),
            f"Choose one of the styles of the model {server.styled!r}: ghibli, toon, painterly; got 'pixel_art'.",
        ),
        (
            (server.styled, 1),
            f"Choose one of the styles of the model {server.styled!r}: ghibli, toon, painterly; got '1'.",
        ),
        ((server.plain, "ghibli"), f"The model {server.plain!r} has no styles; leave the style empty."),
    ]
    for (model, style), message in cases:
        with pytest.raises(Exception) as info:
            client.predict(handle_example(), model, 256, 0.0, style, api_name="/cartoonize")
        assert str(info.value) == message or message in str(info.value), (style, str(info.value))
    assert len(refusals(server.log)) - before == len(cases)  # one line each
    assert "Traceback" not in server.log.read_text()[log_start:]


def test_api_crisp_levels_posterize_the_bundled_model_and_are_refused_elsewhere(server):
    """ "Crisp levels" runs the bundled model's posterizer at full strength: flatter than its learned strength, the
    same size and name; left out, it is off. Ticked for a model without a posterizer, or not a boolean: one message
    and one log line each."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/cartoonize"]
    assert parameters["parameters"][5]["parameter_default"] is False
    # ghibli: the bundled style whose learned strength is low (toon and painterly ship at full strength already)
    learned = client.predict(handle_example(), "bundled", 256, 0.0, "ghibli", api_name="/cartoonize")
    same = client.predict(handle_example(), "bundled", 256, 0.0, "ghibli", False, api_name="/cartoonize")
    crisp = client.predict(handle_example(), "bundled", 256, 0.0, "ghibli", True, api_name="/cartoonize")
    assert Path(crisp).name == "cat-ghibli.png"
    images = [np.asarray(Image.open(path).convert("RGB")) for path in (learned, same, crisp)]
    assert np.array_equal(images[0], images[1]) and images[2].shape == images[0].shape
    assert flat_share(images[2]) > flat_share(images[0]) + 0.02  # hard levels: flatter

    wait_until_loaded(client, server.plain)
    before, log_start = len(refusals(server.log)), len(server.log.read_text())
    cases = [
        ((server.plain, "", True), f"The model {server.plain!r} has no luminance levels to make crisp"),
        (("bundled", "toon", "yes"), "Crisp levels must be true or false; got 'yes'."),
    ]
    for (model, style, value), message in cases:
        with pytest.raises(Exception) as info:
            client.predict(handle_example(), model, 256, 0.0, style, value, api_name="/cartoonize")
        assert message in str(info.value), (value, str(info.value))
    assert len(refusals(server.log)) - before == len(cases)
    assert "Traceback" not in server.log.read_text()[log_start:]


def test_api_server_paths_as_photos_are_refused(server):
    """A file the visitor did not upload is refused by gradio before our code runs, and nothing of it is echoed."""
    stream = raw_call(
        server.url, [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "bundled", 512, 0, "", False]
    )
    assert "event: error" in stream
    assert Path("/etc/hostname").read_text().strip() not in stream


def load_app():
    spec = importlib.util.spec_from_file_location("ghibligan_space_app", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_registry_keeps_failures_and_timeouts_and_logs_each_once(tmp_path, caplog):
    import gradio as gr

    app = load_app()
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "config.json").write_text('{"_class_name": "UNetGenerator", "ngf": 200}')  # 531 M parameters
    registry = app.ModelRegistry([str(hostile), "slow/model"], timeout=0.0)
    with caplog.at_level(logging.INFO, logger="ghibligan.space"):
        registry.load(str(hostile))  # listed by the operator, still refused by max_parameters
        for _ in range(3):
            for name in registry.names:
                with pytest.raises(gr.Error, match="is not available right now"):
                    registry.get(name)
            with pytest.raises(gr.Error, match="Choose one of the models this Space serves"):
                registry.get(str(hostile.parent))
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2, errors  # one per model, however often visitors ask
    assert "above `max_parameters`" in errors[0] and "not loaded after 0 s" in errors[1]
    waiting = app.ModelRegistry(["slow/model"], timeout=600)
    with pytest.raises(gr.Error, match="still loading"):
        waiting.get("slow/model")


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
    page.goto(server.url)
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
    page.goto(server.url)
    text, _ = bad_files
    upload_and_run(page, text)
    error = page.get_by_text("could not be used as a photo").first
    error.wait_for(state="visible", timeout=60_000)
    assert "holiday.png" in error.inner_text()
    assert "Traceback" not in page.content()
    page.wait_for_timeout(300)  # let the toast finish sliding in before the screenshot
    page.screenshot(path=str(screenshot_path(tmp_path, "space-error.png")))
    page.goto(server.url)  # the server keeps serving: a good photo still works
    upload_and_run(page, EXAMPLE)
    page.locator("#result img").wait_for(state="visible", timeout=60_000)
    page.close()


def test_browser_style_selector_follows_the_model(server, browser, tmp_path):
    """Hidden for a model without styles; the chosen model's styles, ghibli first selected, for a style model; the
    cartoon is made in the style picked and named after it. "Crisp levels" shows for a model with a posterizer (the
    bundled one) only."""
    from gradio_client import Client

    wait_until_loaded(Client(server.url, verbose=False), server.styled)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url)
    style, crisp = page.locator("#style"), page.locator("#crisp")
    if not BUNDLED_STYLES:
        style.wait_for(state="hidden", timeout=30_000)
    crisp.wait_for(state="visible", timeout=30_000)  # the bundled model has a posterizer
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name=server.styled).click()
    style.wait_for(state="visible", timeout=30_000)
    assert page.get_by_role("combobox", name="Style", exact=True).input_value() == "ghibli"
    page.get_by_role("combobox", name="Style", exact=True).click()
    assert [text.strip("✓\n ") for text in style.get_by_role("option").all_inner_texts()] == STYLES
    style.get_by_role("option", name="toon", exact=True).click()
    upload_and_run(page, EXAMPLE)
    page.locator("#before_after img").first.wait_for(state="visible", timeout=60_000)
    assert page.locator("#result img").get_attribute("src").endswith("/cat-toon.png")
    page.screenshot(path=str(screenshot_path(tmp_path, "space-styles.png")), full_page=True)
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name=server.plain).click()
    style.wait_for(state="hidden", timeout=30_000)
    crisp.wait_for(state="hidden", timeout=30_000)  # nor has the plain U-Net
    page.close()
