"""A real Chromium (Debian's, from `make system-deps`) for the page tests, with axe-core from npm.

axe-core is installed by `make test` into tests/ui/node_modules (tests/ui/package-lock.json pins it) and
evaluated in the page from there: nothing is fetched at run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, sync_playwright

from tests.helpers import REPO

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make system-deps): never `playwright install`
AXE = REPO / "tests" / "ui" / "node_modules" / "axe-core" / "axe.min.js"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = ViewportSize(width=1440, height=900)
PHONE = ViewportSize(width=390, height=844)
SIZES = {"desktop": DESKTOP, "phone": PHONE}
SHOTS = REPO / "test-artifacts" / "ui"
SERIOUS = ("serious", "critical")


def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (as root) to install Debian's chromium")
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make test` (it runs `npm ci --prefix tests/ui`)")
    with sync_playwright() as p:
        yield _launch(p)


def _launch(p: Playwright) -> Browser:
    return p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA, best practice).

    Evaluated through the DevTools protocol, which the page's Content-Security-Policy does not govern."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text())
    violations: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + n.failureSummary)}))"""
    )
    return [v for v in violations if v["impact"] in SERIOUS]


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than its viewport (0: nothing to scroll sideways)."""
    width: int = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    return width


# The focus ring a person sees on the focused control (or on the label that draws it, for the file input)
FOCUS_RING = """() => {
  const el = document.activeElement;
  const ring = (e) => { const s = getComputedStyle(e);
    return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2; };
  const drawer = el.closest('label.drop') || el;
  return ring(el) || ring(drawer);
}"""
