"""The browser playground at /ui/, driven in a real Chromium (Debian's) against a real server.

Digits are drawn on the pad with pointer events and must be read; the blobs plane, the regression
forms and every model card show what the API answers; nothing leaves 127.0.0.1; the console stays
clean. Screenshots of each view land in test-artifacts/ui/ (not in git): look at them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.helpers import REPO
from tests.server import Server, running
from training import handmade

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make system-deps): never `playwright install`
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = REPO / "test-artifacts" / "ui"
DRAWING_SEED = 14  # the test's own hands: not the card's set (seed 0), never trained on
REFUSED = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (as root) to install Debian's chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
    yield browser
    browser.close()


@dataclass
class Visit:
    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(300)  # let the bars' 120 ms transitions end: a picture, not an assertion
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def tab(self, name: str) -> None:
        self.page.click(f"#tab-{name}")
        self.page.wait_for_selector(f"#view-{name}:not([hidden])")


def _visit(browser: Browser, server: Server) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    visit = Visit(page, server.url)
    page.on("request", lambda r: visit.requests.append(r.url))
    page.on("console", lambda m: visit.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: visit.console.append(f"uncaught: {e}"))
    page.goto(f"{server.url}/ui/")
    page.wait_for_selector("#readiness.ready")
    yield visit
    context.close()
    outside = [u for u in visit.requests if not u.startswith((f"{server.url}/", "blob:", "data:"))]
    assert outside == [], "requests left the server"


@pytest.fixture
def visit(browser: Browser, server: Server) -> Iterator[Visit]:
    """A page in normal use: every request stays on the server, and the console has no error at all."""
    for v in _visit(browser, server):
        yield v
        assert v.console == []


def _draw(page: Page, strokes: list[np.ndarray]) -> None:
    """Pen strokes on the pad as a mouse makes them (pointerdown, pointermoves, pointerup)."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        points = [
            (box["x"] + x * box["width"] / handmade.PAD, box["y"] + y * box["height"] / handmade.PAD) for x, y in stroke
        ]
        page.mouse.move(*points[0])
        page.mouse.down()
        for a, b in itertools.pairwise(points):
            page.mouse.move(*b, steps=max(1, int(np.hypot(b[0] - a[0], b[1] - a[1]) // 6)))
        page.mouse.up()
    page.wait_for_selector("#pad[data-state='idle']")


def _until(page: Page, predicate: str, arg: object = None) -> None:
    """Poll a JavaScript predicate (wait_for_function evaluates strings, which the page's CSP forbids)."""
    for _ in range(600):
        if page.evaluate(predicate, arg):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"still false after 30 s: {predicate} with {arg!r}")


def test_drawn_digits_are_read_on_the_pad(visit: Visit) -> None:
    page = visit.page
    rng = np.random.default_rng(DRAWING_SEED)
    answers = []
    for digit, pen in zip(range(10), [10, 14, 18, 22, 26] * 2, strict=True):
        page.click("#clear")
        page.locator("#pen").fill(str(pen))
        _draw(page, handmade.hand(digit, rng))
        answers.append(int(page.text_content("#digit") or -1))
        bars = page.locator("#bars .pct").all_text_contents()
        assert len(bars) == 10 and all(b.endswith("%") for b in bars)
        seen = page.evaluate(
            "Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 32, 32).data)"
        )
        red = seen[0::4]  # the model's 32x32 input is shown, ink high: a dark ground, light strokes
        assert red[0] == red[31] == red[-32] == red[-1] == 0 and max(red) > 128, red
        if digit == 7:
            visit.screenshot("lenet")
    right = sum(a == d for d, a in enumerate(answers))
    assert right >= 9, f"read {answers} for 0-9"


def test_an_upload_is_read_and_its_input_shown(visit: Visit, tmp_path: Path) -> None:
    sample = next(s for s in handmade.typed(handmade.matplotlib_fonts()[:1], seed=3) if s.label == 4)
    path = tmp_path / "four.png"
    path.write_bytes(sample.png())
    visit.page.set_input_files("#file", str(path))
    visit.page.wait_for_selector("#digit[data-label]")
    assert visit.page.text_content("#digit") == "4"
    assert visit.page.is_visible("#upload-preview")


def test_blobs_plane_shows_the_apis_exact_answer(visit: Visit, http: httpx.Client) -> None:
    page = visit.page
    visit.tab("blobs")
    page.wait_for_selector("#grid-info:has-text('4096 points')")
    box = page.locator("#plane").bounding_box()
    assert box is not None
    for fx, fy in [(0.3, 0.3), (0.72, 0.64), (0.5, 0.9)]:
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        _until(
            page,
            "([x, y]) => { const p = document.getElementById('point');"
            " return p.dataset.x && Math.abs(p.dataset.x - x) < 0.02 && Math.abs(p.dataset.y - y) < 0.02 }",
            [fx * 5 - 2.5, 2.5 - fy * 5],
        )
        x, y = (float(page.get_attribute("#point", a) or "nan") for a in ("data-x", "data-y"))
        shown = float(page.text_content("#probability") or "nan")
        answer = http.post("/v1/blobs/predict", json={"x": [[x, y]]}).json()
        assert shown == answer["probabilities"][0]
        assert page.text_content("#label") == str(answer["labels"][0])
    page.fill("#px", "-1")  # the keyboard reaches every point too: the form, then the plane's arrow keys
    page.fill("#py", "1")
    page.press("#py", "Enter")
    page.wait_for_selector("#point:has-text('(-1, 1)')")
    assert float(page.text_content("#probability") or 0) >= 0.9
    page.focus("#plane")
    for key in ("ArrowRight", "ArrowRight", "ArrowDown", "Enter"):
        page.keyboard.press(key)
    page.wait_for_selector("#point:has-text('(-0.8, 0.9)')")
    visit.screenshot("blobs")


def test_regression_forms_show_the_apis_answers(visit: Visit, http: httpx.Client) -> None:
    page = visit.page
    visit.tab("linear")
    page.wait_for_selector("#line-chart polyline")
    page.fill("#lx", "2.5")
    page.press("#lx", "Enter")
    expected = http.post("/v1/linear/predict", json={"x": [2.5]}).json()["y"][0]
    _until(page, "y => document.getElementById('ly').textContent === String(y)", expected)
    page.fill("#m1", "93")
    page.fill("#m2", "88")
    page.fill("#m3", "93")
    page.click("#multi-form button")
    expected = http.post("/v1/multilinear/predict", json={"x": [[93, 88, 93]]}).json()["y"][0]
    _until(page, "y => document.getElementById('my').textContent === String(y)", expected)
    assert len((page.get_attribute("#line-chart polyline", "points") or "").split()) == 101
    visit.screenshot("regression")


def test_every_models_card_is_shown_with_its_pictures(visit: Visit, http: httpx.Client) -> None:
    page = visit.page
    visit.tab("models")
    models = http.get("/v1/models").json()["models"]
    for info in models:
        card = page.locator(f"article[data-model='{info['name']}']")
        card.wait_for()
        text = card.inner_text()
        for shown in (info["card"]["sha256"], info["provider"], info["card"]["task"], "ready"):
            assert shown in text
        assert info["pictures"], f"{info['name']} has no training pictures"
        for picture in info["pictures"]:
            image = card.locator(f"img[alt^='{info['name']}: {picture.removesuffix('.png').replace('_', ' ')}']")
            image.wait_for()
            assert image.evaluate("img => img.complete && img.naturalWidth > 100")
    visit.screenshot("models")


def test_tabs_follow_the_keyboard(visit: Visit) -> None:
    page = visit.page
    page.focus("#tab-lenet")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-blobs", "aria-selected") == "true"
    assert page.is_visible("#view-blobs") and not page.is_visible("#view-lenet")
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.id") == "tab-models"


def test_errors_are_shown_in_the_servers_words_and_the_page_goes_on(
    browser: Browser, server: Server, http: httpx.Client, tmp_path: Path
) -> None:
    for visit in _visit(browser, server):
        page = visit.page
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"GIF89a not really an image")
        refusal = http.post("/v1/lenet/predict-image", files={"image": ("notes.png", bad.read_bytes(), "image/png")})
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#lenet-error:not([hidden])")
        assert page.text_content("#lenet-error") == f"{refusal.status_code}: {refusal.json()['error']}"
        _draw(page, handmade.hand(3, np.random.default_rng(DRAWING_SEED)))  # still usable
        assert page.text_content("#digit") == "3" and page.is_hidden("#lenet-error")

        visit.tab("linear")
        page.fill("#lx", "1e31")
        page.press("#lx", "Enter")
        refusal = http.post("/v1/linear/predict", json={"x": [1e31]})
        page.wait_for_selector("#linear-error:not([hidden])")
        assert page.text_content("#linear-error") == f"{refusal.status_code}: {refusal.json()['error']}"
        visit.screenshot("error")
        assert all(REFUSED.match(m) for m in visit.console), visit.console  # the refusals themselves, nothing else


def test_a_token_protected_server_works_once_the_token_is_typed(browser: Browser, tmp_path: Path) -> None:
    with running(tmp_path / "server.log", {"TINYSERVE_API_TOKEN": "s3cret-token"}) as server:
        for visit in _visit(browser, server):
            page = visit.page
            _draw(page, handmade.hand(2, np.random.default_rng(DRAWING_SEED)))
            page.wait_for_selector("#lenet-error:not([hidden])")
            assert page.text_content("#lenet-error") == (
                "401: missing or invalid API token: send 'Authorization: Bearer <token>'"
                " (enter the API token at the top of the page)"
            )
            page.fill("#token", "s3cret-token")
            page.press("#token", "Enter")
            page.wait_for_selector("#digit[data-label]")
            assert page.text_content("#digit") == "2" and page.is_hidden("#lenet-error")
            assert page.evaluate("Object.keys(localStorage).length + Object.keys(sessionStorage).length") == 0
            assert all(REFUSED.match(m) for m in visit.console), visit.console


def test_static_files_carry_a_policy_that_keeps_the_page_on_this_server(http: httpx.Client) -> None:
    r = http.get("/ui/")
    assert r.status_code == 200 and "tinyserve playground" in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert http.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert http.get("/ui/nothing-here.js").status_code == 404
