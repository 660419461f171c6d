"""The browser playground at /ui/, driven in a real Chromium (Debian's) against a real server.

What a person sees is measured, not only the text: digits drawn on the pad with pointer events must be
read, each probability bar is drawn as wide as its probability, the page never scrolls sideways from
320 to 430 px, the answer sits beside the pad on a phone, the status chip follows the server (401,
stopped), axe-core finds nothing serious on any view at either size, the keyboard alone reaches every
control with a visible focus, and a screen reader hears one answer per stroke. Nothing leaves
127.0.0.1; the console stays clean. Screenshots of each view at both sizes land in test-artifacts/ui/
(not in git): look at them.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, Page

from tests.browser import FOCUS_RING, SIZES, axe_violations, chromium, overflow, screenshot
from tests.server import Server, running, stop
from training import handmade

pytestmark = pytest.mark.timeout(300)

DRAWING_SEED = 14  # the test's own hands: not the card's set (seed 0), never trained on
REFUSED = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")
VIEWS = ("lenet", "blobs", "linear", "models")
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The one other server of this module: the shipped models behind an API token."""
    with running(tmp_path_factory.mktemp("token") / "server.log", {"TINYSERVE_API_TOKEN": TOKEN}) as server:
        yield server


@dataclass
class Visit:
    page: Page
    base: str
    size: str
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        screenshot(self.page, f"{name}-{self.size}")

    def tab(self, name: str) -> None:
        self.page.click(f"#tab-{name}")
        self.page.wait_for_selector(f"#view-{name}:not([hidden])")

    def loaded(self, view: str) -> None:
        """Wait until the view shows what the server answered."""
        ready = {
            "lenet": "#bars li:nth-child(10)",
            "blobs": "#grid-info:has-text('4096 points')",
            "linear": "#ly[data-value]",
            "models": "article[data-model='lenet'] figure img",
        }[view]
        self.page.wait_for_selector(ready)
        if view == "linear":
            self.page.wait_for_selector("#my[data-value]")
        if view == "models":
            _until(self.page, "() => [...document.querySelectorAll('figure img')].every(i => i.complete)")


def _visit(browser: Browser, server: Server, size: str = "desktop", ready: str = "ready") -> Iterator[Visit]:
    context = browser.new_context(viewport=SIZES[size], has_touch=size == "phone")
    page = context.new_page()
    visit = Visit(page, server.url, size)
    page.on("request", lambda r: visit.requests.append(r.url))
    page.on("console", lambda m: visit.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: visit.console.append(f"uncaught: {e}"))
    page.goto(f"{server.url}/ui/")
    page.wait_for_selector(f"#readiness[data-state='{ready}']")
    yield visit
    context.close()
    outside = [u for u in visit.requests if not u.startswith((f"{server.url}/", "blob:", "data:"))]
    assert outside == [], "requests left the server"


@pytest.fixture(params=list(SIZES))
def visit(request: pytest.FixtureRequest, browser: Browser, server: Server) -> Iterator[Visit]:
    """A page in normal use, on a desktop and on a phone: every request stays on the server, and the
    console has no error at all."""
    for v in _visit(browser, server, request.param):
        yield v
        assert v.console == []


@pytest.fixture
def desktop(browser: Browser, server: Server) -> Iterator[Visit]:
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


def _bar_widths(page: Page) -> list[tuple[float, float]]:
    """Each bar's drawn width as a share of its track, and the probability its meter states."""
    shares: list[tuple[float, float]] = page.evaluate(
        """() => [...document.querySelectorAll('#bars .track')].map(t => [
            t.querySelector('.fill').getBoundingClientRect().width / t.clientWidth,
            Number(t.getAttribute('aria-valuenow')) / 100])"""
    )
    return shares


def _listen(page: Page, selector: str) -> None:
    """Record every text a live region is given (what a screen reader would be handed)."""
    page.evaluate(
        """s => { const el = document.querySelector(s); window.heard = [];
        new MutationObserver(() => window.heard.push(el.textContent)).observe(el,
            {childList: true, characterData: true, subtree: true}); }""",
        selector,
    )


def test_drawn_digits_are_read_and_the_bars_drawn_as_wide_as_each_probability(desktop: Visit) -> None:
    page = desktop.page
    rng = np.random.default_rng(DRAWING_SEED)
    answers = []
    for digit, pen in zip(range(10), [10, 14, 18, 22, 26] * 2, strict=True):
        page.click("#clear")
        page.locator("#pen").fill(str(pen))
        _draw(page, handmade.hand(digit, rng))
        page.wait_for_selector("#digit[data-label]")
        answers.append(int(page.get_attribute("#digit", "data-label") or -1))
        page.wait_for_timeout(200)  # the bars' 120 ms width transition ends: the width is then measured
        widths = _bar_widths(page)
        assert sum(p for _, p in widths) == pytest.approx(1, abs=0.01)
        for drawn, probability in widths:
            assert drawn == pytest.approx(probability, abs=0.01), widths
        seen = page.evaluate(
            "Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 32, 32).data)"
        )
        red = seen[0::4]  # the model's 32x32 input is shown, ink high: a dark ground, light strokes
        assert red[0] == red[31] == red[-32] == red[-1] == 0 and max(red) > 128, red
        if digit == 7:
            desktop.screenshot("lenet-seven")
    right = sum(a == d for d, a in enumerate(answers))
    assert right >= 9, f"read {answers} for 0-9"


def test_a_long_stroke_is_announced_once_when_it_ends(desktop: Visit) -> None:
    page = desktop.page
    _listen(page, "#announce")
    box = page.locator("#pad").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 150, box["y"] + 30)
    page.mouse.down()
    for k in range(60):  # a slow 1, top to bottom, in 60 moves: many answers reach the screen meanwhile
        page.mouse.move(box["x"] + 150, box["y"] + 30 + 3.5 * k)
        page.wait_for_timeout(20)
    assert page.evaluate("window.heard") == []  # nothing spoken while the pen is down
    page.mouse.up()
    page.wait_for_selector("#pad[data-state='idle']")
    _until(page, "() => window.heard.length > 0")
    label, sure = page.get_attribute("#digit", "data-label"), (page.text_content("#confidence") or "").split(" (")[0]
    assert page.evaluate("window.heard") == [f"LeNet reads {label}, {sure}."]
    for selector in ("#pad", "#seen"):
        assert page.get_attribute(selector, "role") == "img" and page.get_attribute(selector, "aria-label")
    assert page.locator("[aria-live], [role=status], output").count() == page.locator("[role=status], output").count()


def test_a_digit_can_be_given_by_keyboard_alone(desktop: Visit) -> None:
    page = desktop.page
    for digit, face in (("4", "sans-serif"), ("7", "serif"), ("2", "monospace")):
        page.focus("#typed")
        page.keyboard.type(digit)
        page.keyboard.press("Tab")  # the face
        assert page.evaluate("document.activeElement.id") == "face"
        page.select_option("#face", face)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Write it"
        page.keyboard.press("Enter")
        _until(page, "d => document.getElementById('digit').dataset.label === d", digit)
        page.fill("#typed", "")
    page.keyboard.press("c")  # no single-key shortcut: typing a letter anywhere clears nothing
    assert page.get_attribute("#digit", "data-label") == "2"


def test_an_upload_shows_its_progress_then_the_answer_and_the_image(desktop: Visit, tmp_path: Path) -> None:
    sample = next(s for s in handmade.typed(handmade.matplotlib_fonts()[:1], seed=3) if s.label == 4)
    big = Image.fromarray(sample.image).resize((1600, 1600))  # a photo-sized upload: its progress shows
    path = tmp_path / "four.png"
    big.save(path)
    page = desktop.page
    _listen(page, "#upload-label")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#digit[data-label]")
    assert page.text_content("#digit") == "4"
    assert page.is_visible("#upload-preview") and page.is_hidden("#upload")
    assert page.evaluate("document.getElementById('upload-preview').naturalWidth") == 1600
    heard = page.evaluate("window.heard")  # the progress bar's label: sending, then the server at work
    assert heard[0] == "Uploading four.png…" and "The server is reading four.png…" in heard


def test_blobs_plane_shows_the_apis_exact_answer(desktop: Visit, http: httpx.Client) -> None:
    page = desktop.page
    desktop.tab("blobs")
    desktop.loaded("blobs")
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
        answer = http.post("/v1/blobs/predict", json={"x": [[x, y]]}).json()
        _until(
            page, "p => document.getElementById('probability').dataset.value === String(p)", answer["probabilities"][0]
        )
        assert page.text_content("#probability") == f"{answer['probabilities'][0]:.4f}"
        assert page.text_content("#label") == str(answer["labels"][0])
    page.fill("#px", "-1")  # the keyboard reaches every point too: the form, then the plane's arrow keys
    page.fill("#py", "1")
    page.press("#py", "Enter")
    page.wait_for_selector("#point:has-text('(-1, 1)')")
    assert float(page.get_attribute("#probability", "data-value") or 0) >= 0.9
    _listen(page, "#plane-cursor")
    page.focus("#plane")
    for key in ("ArrowRight", "ArrowRight", "ArrowDown"):
        page.keyboard.press(key)
    _until(page, "() => window.heard.length > 0")  # the cursor is spoken once the keys rest, before Enter
    (spoken,) = page.evaluate("window.heard")
    assert spoken.startswith("Cursor at x -0.8, y 0.9, the map shows P(label 1) about 0.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#point:has-text('(-0.8, 0.9)')")


def test_regression_answers_are_shown_rounded_and_kept_exact(desktop: Visit, http: httpx.Client) -> None:
    page = desktop.page
    desktop.tab("linear")
    page.wait_for_selector("#line-chart polyline")
    page.fill("#lx", "2.5")
    page.press("#lx", "Enter")
    expected = http.post("/v1/linear/predict", json={"x": [2.5]}).json()["y"][0]
    _until(page, "y => document.getElementById('ly').dataset.value === String(y)", expected)
    assert page.text_content("#ly") == f"{expected:.4f}".rstrip("0").rstrip(".")
    page.fill("#m1", "93")
    page.fill("#m2", "88")
    page.fill("#m3", "93")
    page.click("#multi-form button")
    expected = http.post("/v1/multilinear/predict", json={"x": [[93, 88, 93]]}).json()["y"][0]
    _until(page, "y => document.getElementById('my').dataset.value === String(y)", expected)
    assert len((page.get_attribute("#line-chart polyline", "points") or "").split()) == 101
    ticks = page.locator("#line-chart text").all_text_contents()
    for tick in ticks:  # round ticks: 1, 2 or 5 times a power of ten, never 72.94
        assert tick in ("x", "y") or re.fullmatch(r"−?-?[0-9,]*[0-9](\.[05])?|−?-?0\.[0-9]*[125]0*", tick), ticks


def test_every_models_card_is_shown_readably_with_its_pictures(desktop: Visit, http: httpx.Client) -> None:
    page = desktop.page
    desktop.tab("models")
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
            assert image.evaluate("img => img.getBoundingClientRect().width") >= 300  # a picture, not a thumbnail
    blobs = page.locator("article[data-model='blobs']").inner_text()
    assert "P(label 1) at (−1, 1)" in blobs and "largest difference, ONNX against PyTorch" in blobs
    assert "(1, 1), (-1, -1), (1, -1), (-1, 1)" in blobs  # the cluster centres, as points


@pytest.mark.parametrize("width", [320, 360, 375, 390, 414, 430])
def test_no_view_scrolls_sideways_on_a_phone(browser: Browser, server: Server, width: int) -> None:
    for visit in _visit(browser, server, "phone"):
        visit.page.set_viewport_size({"width": width, "height": 800})
        for view in VIEWS:
            visit.tab(view)
            visit.loaded(view)
            assert overflow(visit.page) == 0, f"{view} at {width} px"
            for selector in ("#tab-models", "#token", "#plane", "#pad", ".top"):  # each fits: each can be tapped
                box = visit.page.locator(selector).bounding_box()
                assert box is None or (box["x"] >= 0 and box["x"] + box["width"] <= width), (selector, box)
        assert visit.console == []


def test_the_answer_is_in_view_beside_the_pad_on_a_phone(browser: Browser, server: Server) -> None:
    for visit in _visit(browser, server, "phone"):
        page = visit.page
        page.locator("#pad").scroll_into_view_if_needed()
        _draw(page, handmade.hand(7, np.random.default_rng(DRAWING_SEED)))
        page.wait_for_selector("#glance-digit:text('7')")
        pad, glance = (page.locator(s).bounding_box() for s in ("#pad", "#glance"))
        assert pad is not None and glance is not None
        assert glance["x"] >= pad["x"] + pad["width"] and glance["y"] < pad["y"] + pad["height"]  # beside it
        assert pad["y"] >= 0 and glance["y"] + glance["height"] <= 844  # both on screen while drawing
        assert glance["x"] + glance["width"] <= 390


def test_every_view_at_both_sizes_passes_axe_and_is_photographed(visit: Visit) -> None:
    page = visit.page
    for view in VIEWS:
        visit.tab(view)
        visit.loaded(view)
        if view == "lenet":
            _draw(page, handmade.hand(5, np.random.default_rng(DRAWING_SEED)))
            page.wait_for_selector("#digit[data-label]")
            page.wait_for_timeout(200)  # the bars' transition: a picture, not an assertion
        assert axe_violations(page) == [], view
        visit.screenshot(view)
    visit.tab("lenet")
    page.click("#clear")
    assert axe_violations(page) == []  # and the empty state
    visit.screenshot("lenet-empty")


def test_the_keyboard_reaches_every_control_with_a_visible_focus(visit: Visit) -> None:
    page = visit.page
    for view in VIEWS:
        visit.tab(view)
        visit.loaded(view)
        controls = set(  # each named by id, or by its text and place among the page's controls
            page.evaluate(
                """() => [...document.querySelectorAll('a[href], button, input, select, [tabindex="0"]')]
                .map((e, i) => { e.dataset.key = e.id || `${e.textContent.trim()} #${i}`; return e; })
                .filter(e => e.getClientRects().length || e.type === 'file')
                .filter(e => e.closest('[hidden]') === null && e.tabIndex >= 0)
                .map(e => e.dataset.key)"""
            )
        )
        page.focus(".skip")  # the first stop of the page: Tab goes on from here
        reached = {page.evaluate("document.activeElement.dataset.key")}
        for _ in range(60):
            page.keyboard.press("Tab")
            focused = page.evaluate(
                "document.activeElement === document.body ? null : document.activeElement.dataset.key"
            )
            if focused is None or focused in reached:  # out of the page, or round again
                break
            reached.add(focused)
            assert page.evaluate(FOCUS_RING), f"{focused} has no visible focus on {view}"
        assert controls <= reached, f"{view}: never reached {controls - reached}"
        if view == "lenet":
            assert "file" in reached and not any(k.startswith("drop") for k in reached)  # one tab stop for the upload


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
        assert page.is_hidden("#upload-figure")  # no broken picture under the error
        assert page.evaluate("[...document.images].filter(i => i.getClientRects().length && !i.naturalWidth)") == []
        _draw(page, handmade.hand(3, np.random.default_rng(DRAWING_SEED)))  # still usable
        assert page.text_content("#digit") == "3" and page.is_hidden("#lenet-error")

        visit.tab("linear")
        page.fill("#lx", "1e31")
        page.press("#lx", "Enter")
        refusal = http.post("/v1/linear/predict", json={"x": [1e31]})
        page.wait_for_selector("#linear-error:not([hidden])")
        assert page.text_content("#linear-error") == f"{refusal.status_code}: {refusal.json()['error']}"
        assert page.locator("#line-chart .mark").count() == 0  # no answer, no point drawn for it
        assert axe_violations(page) == []
        visit.screenshot("error")
        assert all(REFUSED.match(m) for m in visit.console), visit.console  # the refusals themselves, nothing else


def test_a_scribble_or_a_letter_is_not_called_a_digit(desktop: Visit, http: httpx.Client) -> None:
    spiral = [(140 + r * math.cos(r / 8), 140 + r * math.sin(r / 8)) for r in range(0, 110, 2)]
    pad = Image.new("L", (handmade.PAD, handmade.PAD), 255)
    ImageDraw.Draw(pad).line(spiral, fill=17, width=18, joint="curve")
    png = io.BytesIO()
    pad.save(png, "PNG")
    answer = http.post("/v1/lenet/predict-image", files={"image": ("spiral.png", png.getvalue(), "image/png")}).json()
    assert answer["recognised"] is False
    page = desktop.page
    page.locator("#pen").fill("18")
    _draw(page, [np.array(spiral)])
    page.wait_for_selector("#digit[data-label]")
    assert page.text_content("#digit") == "That does not look like a digit."
    assert page.text_content("#glance-pct") == "not a digit"
    assert axe_violations(page) == []
    desktop.screenshot("lenet-not-a-digit")
    page.click("#clear")
    _draw(page, [np.array([(70, 50), (210, 230)]), np.array([(210, 50), (70, 230)])])  # a letter X: no "8"
    page.wait_for_selector("#digit[data-label]")
    assert page.text_content("#digit") == "That does not look like a digit."


def test_a_token_protected_server_and_the_status_chip_that_follows_it(browser: Browser, token_server: Server) -> None:
    for visit in _visit(browser, token_server, ready="token"):
        page = visit.page
        assert page.text_content("#readiness") == "needs the API token (401)"
        _draw(page, handmade.hand(2, np.random.default_rng(DRAWING_SEED)))
        page.wait_for_selector("#lenet-error:not([hidden])")
        assert page.text_content("#lenet-error") == (
            "401: missing or invalid API token: send 'Authorization: Bearer <token>'"
            " (enter the API token at the top of the page)"
        )
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_selector("#digit[data-label]")
        assert page.text_content("#digit") == "2" and page.is_hidden("#lenet-error")
        page.wait_for_selector("#readiness[data-state='ready']")
        assert page.evaluate("Object.keys(localStorage).length + Object.keys(sessionStorage).length") == 0
        stop(token_server)  # the server goes away: the chip says so, in words and colour
        page.wait_for_selector("#readiness[data-state='down']")  # "not ready (503)" while it drains, then:
        page.wait_for_selector("#readiness:text-is('unreachable')")
        visit.screenshot("stopped")
        gone = ("ERR_CONNECTION_REFUSED", "status of 503")  # the server draining, then away
        assert [m for m in visit.console if not REFUSED.match(m) and not any(g in m for g in gone)] == []


def test_static_files_carry_a_policy_that_keeps_the_page_on_this_server(http: httpx.Client) -> None:
    r = http.get("/ui/")
    assert r.status_code == 200 and "tinyserve playground" in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert http.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert http.get("/ui/nothing-here.js").status_code == 404
