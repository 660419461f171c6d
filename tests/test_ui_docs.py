"""The API docs at `/` and the document behind them, `/docs.json`, as a person uses them in Chromium.

"Try it out" fills in the README's examples and the server answers them; the upload is a file picker;
every route documents the one error envelope the server sends (400, never a 422 it does not send);
Authorize takes the token of a token-protected server; axe-core finds nothing serious; nothing is
fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page

import modelrepo
from service import openapi
from service.kinds import contract
from tests.browser import SIZES, axe_violations, chromium, overflow, screenshot
from tests.helpers import REPO
from tests.server import Server, running

pytestmark = pytest.mark.timeout(300)

TOKEN = "s3cret-token"
METHODS = ("get", "post")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture(scope="module")
def spec(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def test_every_route_documents_the_envelope_it_really_sends(spec: dict[str, Any], http: httpx.Client) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        assert "422" not in responses, path
        for status, response in responses.items():
            if status[0] in "45":
                assert response["content"]["application/json"]["schema"] == error, (path, status)
        if method == "post":
            assert {"400", "401", "413", "415", "429", "503"} <= set(responses), path
    refused = http.post("/v1/linear/predict", json={"x": [1, "2"]})
    documented = spec["paths"]["/v1/linear/predict"]["post"]["responses"]["400"]["content"]["application/json"]
    assert refused.status_code == 400 and refused.json()["error"] == documented["example"]["error"]
    assert set(spec["components"]["schemas"]) >= {"Error"}
    assert not {"HTTPValidationError", "InvalidArgument"} & set(spec["components"]["schemas"])


def test_every_route_has_a_tag_and_a_security_requirement(spec: dict[str, Any]) -> None:
    tags = {t["name"] for t in spec["tags"]}
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "TINYSERVE_API_TOKEN, when the server has one (without one, every route is open)",
    }
    for path, _, operation in _operations(spec):
        assert operation["tags"][0] in tags, path
        open_ = path in ("/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
        assert operation["security"] == ([] if open_ else [{"token": []}, {}]), path  # {}: or none, without one


def test_every_example_is_the_readmes_and_the_server_answers_it(spec: dict[str, Any], http: httpx.Client) -> None:
    bodies = {}
    for path, _method, operation in _operations(spec):
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue
        parameters = {p["name"]: p["example"] for p in operation.get("parameters", []) if p["in"] == "path"}
        bodies[path] = media["example"]
        r = http.post(path.format(**parameters), json=media["example"])
        assert r.status_code == 200, (path, r.text)
        if path == "/v1/lenet/predict":
            assert r.json()["labels"] == [7]  # a real digit, not a grid of ones
    assert bodies["/v1/linear/predict"] == {"x": [1.0, 2.0]}
    assert bodies["/v1/multilinear/predict"] == {"x": [[73, 80, 75]]}
    assert bodies["/v1/blobs/predict"] == {"x": [[1, 1], [-1, 1]]}
    upload = spec["paths"]["/v1/lenet/predict-image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    reference = upload["schema"]["$ref"].rsplit("/", 1)[1]
    assert spec["components"]["schemas"][reference]["properties"]["image"]["format"] == "binary"


def _open(page: Page, path: str) -> Locator:
    """Expand the POST operation of this path and press Try it out."""
    block = page.locator(".opblock-post").filter(has=page.locator(f".opblock-summary-path[data-path='{path}']"))
    block.locator(".opblock-summary-control").click()
    block.locator("button.try-out__btn").click()
    return block


def _execute(block: Locator) -> str:
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    return status.inner_text().strip()


def _visit(browser: Browser, server: Server, size: str) -> Iterator[Page]:
    context = browser.new_context(viewport=SIZES[size])
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{server.url}/")
    page.wait_for_selector(".opblock-tag-section")
    yield page
    context.close()
    assert [u for u in requests if not u.startswith((f"{server.url}/", "data:", "blob:"))] == []


@pytest.mark.parametrize("size", list(SIZES))
def test_the_docs_page_runs_the_examples_and_passes_axe(browser: Browser, server: Server, size: str) -> None:
    for page in _visit(browser, server, size):
        tags = page.locator(".opblock-tag").all_text_contents()
        assert [t.split(" ")[0] for t in tags[:2]] == ["v1:", "v1:"] and "default" not in " ".join(tags)
        assert page.locator(".btn.authorize").count() == 1
        assert axe_violations(page) == []
        linear = _open(page, "/v1/linear/predict")
        body = linear.locator("textarea.body-param__text").input_value()
        assert body.replace(" ", "").replace("\n", "") == '{"x":[1,2]}'
        assert _execute(linear) == "200"
        lenet = _open(page, "/v1/lenet/predict")
        assert _execute(lenet) == "200"
        assert '"labels": [\n    7\n  ]' in lenet.locator(".live-responses-table .microlight").first.inner_text()
        upload = _open(page, "/v1/lenet/predict-image")
        assert upload.locator("input[type=file]").count() == 1  # a file picker, not a text box
        assert axe_violations(page) == []
        assert overflow(page) == 0
        screenshot(page, f"docs-{size}")


def test_authorize_takes_the_token_of_a_protected_server(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running(tmp_path_factory.mktemp("docs") / "server.log", {"TINYSERVE_API_TOKEN": TOKEN}) as server:
        for page in _visit(browser, server, "desktop"):
            page.click(".btn.authorize")
            page.fill(".auth-container input", TOKEN)
            page.click(".auth-btn-wrapper button.authorize")
            page.click(".auth-btn-wrapper button.btn-done")
            assert _execute(_open(page, "/v1/linear/predict")) == "200"


def test_the_typed_routes_made_from_the_cards_are_documented_as_the_page_needs() -> None:
    """The per-model routes (service.kinds, from each card) through the same rewrite: examples, envelope, tags."""
    contracts = {e.name: contract(e.card) for e in modelrepo.discover(REPO / "models")}
    spec = openapi.describe(openapi.add_models({"paths": {}}, contracts))
    operation = spec["paths"]["/v1/linear/predict"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["example"] == {"x": [1.0, 2.0]}
    assert "422" not in operation["responses"] and "HTTPValidationError" not in spec["components"]["schemas"]
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert operation["tags"] == ["v1: predict"] and operation["security"] == [{"token": []}, {}]
    assert {"LinearRequest", "LenetRequest", "LenetResponse"} <= set(spec["components"]["schemas"])
    assert "recognised" in spec["components"]["schemas"]["LenetResponse"]["properties"]
