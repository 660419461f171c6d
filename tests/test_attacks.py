"""Issue 21's cheap attacks, each against a real server over real sockets, each with what must come back.

One server for most (a worker, a token file, a metrics token, short timeouts, a small concurrency and body
budget), one more with a small file limit and an answer deadline of 50 ms. The attacks themselves
are benchmarks/attack.py's, which `make attack` replays against any running server.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks import attack
from benchmarks.attack import Target
from service import lifecycle, metrics
from tests.server import Server, refused_start, running, wait_ready

pytestmark = pytest.mark.timeout(300)

TOKEN, METRICS_TOKEN = "attack-api-token", "attack-metrics-token"
BODY_BUDGET = 32 * 2**20
EDGE = {
    "TINYSERVE_WORKERS": "1",  # one worker: its budget, its slots and its event loop are what is measured
    "TINYSERVE_MAX_CONCURRENCY": "4",
    "TINYSERVE_HEADER_TIMEOUT": "1",
    "TINYSERVE_IDLE_TIMEOUT": "1",
    "TINYSERVE_BODY_TIMEOUT": "3",
    "TINYSERVE_MAX_BODY_BYTES_IN_FLIGHT": str(BODY_BUDGET),
}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Target]]:
    home = tmp_path_factory.mktemp("edge")
    (home / "token").write_text(f"{TOKEN}\n")  # as `kubectl create secret --from-file` leaves it: a newline
    (home / "metrics-token").write_text(METRICS_TOKEN)
    env = EDGE | {
        "TINYSERVE_API_TOKEN_FILE": str(home / "token"),
        "TINYSERVE_METRICS_TOKEN_FILE": str(home / "metrics-token"),
    }
    with running(home / "server.log", env) as server:
        yield server, Target(server.url, TOKEN, METRICS_TOKEN, server.process.pid)


@pytest.fixture
def target(edge: tuple[Server, Target]) -> Target:
    return edge[1]


def _worker(target: Target) -> psutil.Process:
    (worker,) = target.workers()
    return worker


# --- in process ---------------------------------------------------------------------------------------


def test_route_labels_are_the_templates_or_other_whatever_the_path() -> None:
    labels = {metrics.route_label(path, 200) for path in (f"/{c}" * n for c in "abv12/" for n in range(1, 9))}
    labels |= {metrics.route_label(f"/v2/models/m{i}/versions/{i}/infer", 200) for i in range(50)}
    labels |= {metrics.route_label(f"/v1/m{i}/predict", 404) for i in range(50)}
    templates = {template for template, _ in metrics.ROUTE_TEMPLATES}
    assert labels <= templates | {"other"}
    assert metrics.route_label("/v2/models/x/versions/3/infer", 200) == "/v2/models/{name}/{action}"
    assert metrics.route_label("/v1/nope/predict", 404) == "other"  # no route answered it


def test_a_worker_exit_is_described_by_its_signal() -> None:
    assert lifecycle.exit_cause("service", 7, -signal.SIGKILL)[1:] == (
        "worker %s (pid %d) exited: %s",
        "service",
        7,
        "killed by SIGKILL (the kernel's OOM killer, or a container's memory limit, sends it)",
    )
    assert lifecycle.exit_cause("service", 7, -signal.SIGTERM)[4] == "stopped by SIGTERM"
    assert lifecycle.exit_cause("service", 7, 3)[4] == "exit code 3"


# --- authentication -------------------------------------------------------------------------------------


def test_a_blank_token_refuses_the_start(tmp_path: Path) -> None:
    line = refused_start(tmp_path / "server.log", {"TINYSERVE_API_TOKEN": " "})
    assert line == (
        "tinyserve: refusing to start: TINYSERVE_API_TOKEN: Value error, set but blank; give a token, "
        "or unset the variable to serve without authentication"
    )


def test_an_empty_token_file_refuses_the_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    line = refused_start(tmp_path / "server.log", {"TINYSERVE_API_TOKEN_FILE": str(tmp_path / "token")})
    assert line == (
        f"tinyserve: refusing to start: TINYSERVE_API_TOKEN_FILE: Value error, {tmp_path / 'token'} is empty; "
        "it must hold the token"
    )


def test_the_token_file_is_read_stripped_and_the_start_says_auth_is_on(edge: tuple[Server, Target]) -> None:
    server, target = edge
    assert (
        "authentication: on (token from TINYSERVE_API_TOKEN_FILE); open without it: the probes and the page's "
        "static files; /metrics needs its own token" in server.output()
    )
    with httpx.Client(base_url=target.url, timeout=60) as client:
        predict = {"url": "/v1/linear/predict", "json": {"x": [1.0]}}
        assert client.post(**predict, headers=target.headers()).status_code == 200  # type: ignore[arg-type]
        assert client.post(**predict).status_code == 401  # type: ignore[arg-type]


def test_metrics_need_the_metrics_token(target: Target) -> None:
    with httpx.Client(base_url=target.url, timeout=60) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=target.headers(TOKEN)).status_code == 401  # the API token is not it
        scraped = client.get("/metrics", headers=target.headers(METRICS_TOKEN))
    assert scraped.status_code == 200 and "tinyserve_http_requests_total" in scraped.text


# --- bounded cost per request ---------------------------------------------------------------------------


def test_unknown_paths_add_no_metric_series(target: Target) -> None:
    outcome = attack.metric_series(target, paths=600)
    before, after, leaked = outcome.seen
    assert (after - before, leaked) == (0, False), outcome.got


def test_a_30000_pixel_square_png_is_refused_413_naming_the_cap(target: Target) -> None:
    r = attack.png_bomb(target).seen
    assert (r.status_code, r.json()) == (
        413,
        {"error": "image: expected at most 8388608 pixels (8.4 megapixels), got 30000x30000", "detail": []},
    )


def test_tiny_jpegs_claiming_8000_pixels_a_side_cost_little_memory(target: Target) -> None:
    outcome = attack.jpeg_header_bomb(target, uploads=6)
    assert outcome.held, outcome.got  # each answered (libjpeg fills what is missing, or it is refused 400), < 200 MiB
    assert {r.status_code for r in outcome.seen} <= {200, 400}


def test_a_48_megapixel_photo_is_decoded_at_reduced_size(target: Target) -> None:
    outcome = attack.big_photo(target)
    assert outcome.seen.status_code == 200 and outcome.seen.json()["label"] == 0
    assert outcome.held, outcome.got


def test_the_event_loop_turns_while_images_decode(target: Target) -> None:
    """Ten uploads queue for the worker's one decoding thread; /livez keeps answering meanwhile."""
    image = attack.noise_png(2896, 2896)  # just under the cap: the slowest image the route accepts
    pending = threading.Event()
    answers: list[int] = []

    def uploads() -> None:
        with target.client() as client:
            threads = [threading.Thread(target=attack.upload, args=(client, image)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        pending.clear()

    pending.set()
    sender = threading.Thread(target=uploads)
    sender.start()
    with httpx.Client(base_url=target.url, timeout=60) as client:
        while pending.is_set():
            answers.append(client.get("/livez").status_code)
    sender.join()
    assert Counter(answers)[200] >= 50, Counter(answers)  # on the loop, each decode would hold every probe


def test_an_unknown_field_name_of_5_mb_is_not_echoed_whole(target: Target) -> None:
    r = attack.unknown_field(target).seen
    assert r.status_code == 400 and len(r.content) < 4096
    name = "a" * 80  # the core quotes at most 80 characters of a client's string, and says how long it was
    assert r.json()["error"] == f"{name}... (5242880 characters): unknown field (this endpoint takes only x)"


def test_a_request_naming_300000_outputs_or_parameters_is_refused_by_their_count(target: Target) -> None:
    answers = attack.many_entries(target).seen
    assert {what: (r.status_code, r.json()["error"]) for what, r in answers.items()} == {
        "outputs": (400, "the request has 300000 outputs; at most 64 are accepted"),
        "parameters": (400, "the request has 300000 parameters; at most 64 are accepted"),
    }


def test_typed_bodies_of_a_million_lists_or_fields_are_refused_by_their_count(target: Target) -> None:
    answers = attack.typed_objects(target).seen
    valid = "a valid one has at most 4097 lists, 1 object and 1 string (the field name x)"
    assert {what: (r.status_code, r.json()["error"]) for what, r in answers.items()} == {
        "lists": (400, f"request body has 1000001 JSON lists; {valid}"),
        "fields": (400, f"request body has 1000001 JSON strings; {valid}"),
    }


# --- slow and idle clients ------------------------------------------------------------------------------


def test_slow_headers_get_408_and_are_closed(target: Target) -> None:
    outcome = attack.slow_headers(target, connections=100)
    assert outcome.seen == Counter({408: 100})


def test_idle_connections_are_closed(target: Target) -> None:
    assert attack.idle_connections(target, connections=300).seen == 300


def test_a_huge_header_is_refused_431_before_it_is_read(target: Target) -> None:
    outcome = attack.huge_header(target, size=8 * 2**20)
    assert attack.status_of(outcome.seen) == 431 and outcome.held, outcome.got
    assert attack.body_of(outcome.seen) == {
        "error": "request headers too large: more than 32768 bytes (TINYSERVE_MAX_HEADER_BYTES)",
        "detail": [],
    }
    assert httpx.get(f"{target.url}/livez", timeout=60).status_code == 200


def test_slow_bodies_hold_no_slot_and_get_408(target: Target) -> None:
    fresh, slow = attack.slow_bodies(target, connections=12).seen  # three times TINYSERVE_MAX_CONCURRENCY
    assert fresh.status_code == 200
    assert slow == Counter({408: 12})


def test_a_slow_body_gets_408_in_the_envelope(target: Target) -> None:
    head = attack.request_head(
        target, "POST", "/v1/linear/predict", {"Content-Type": "application/json", "Content-Length": "20"}
    )
    with closing(attack.connect(target)) as sock:
        sock.sendall(head + b'{"x"')
        raw = attack.read_until_closed(sock)
    assert attack.status_of(raw) == 408
    assert attack.body_of(raw) == {
        "error": "request body not received within 3 s (TINYSERVE_BODY_TIMEOUT)",
        "detail": [],
    }


def test_held_chunked_bodies_are_bounded_by_the_workers_budget(target: Target) -> None:
    outcome = attack.chunked_bodies(target, connections=8, each=8 * 2**20)  # 64 MiB if all were held
    assert outcome.seen[429] >= 4 and set(outcome.seen) <= {429, 408}, outcome.got  # 32 MiB at most held
    assert outcome.held, outcome.got
    assert httpx.post(f"{target.url}/v1/linear/predict", json={"x": [1.0]}, headers=target.headers()).status_code == 200


# --- headers and routes ---------------------------------------------------------------------------------


def test_repository_calls_read_at_most_64_kib_of_body(target: Target) -> None:
    assert attack.repository_bodies(target).seen == [413, 413]  # declared: at once; chunked: past 64 KiB
    with target.client() as client:
        r = client.post("/v2/repository/index", content=b" " * (64 * 1024 + 1))
        assert (r.status_code, r.json()["error"]) == (
            413,
            "request body too large: 65537 bytes, the limit for a repository call is 65536",
        )
        assert client.post("/v2/repository/index", content=b'{"ready": true}').status_code == 200


def test_content_length_with_spaces_is_read_per_rfc(target: Target) -> None:
    raw = attack.content_length_spaces(target).seen
    assert attack.status_of(raw) == 200 and attack.body_of(raw)["model"] == "linear"


def test_head_is_answered_wherever_get_is(target: Target) -> None:
    outcome = attack.head_requests(target)
    assert outcome.held, outcome.got


def test_redirects_are_relative_whatever_the_host(target: Target) -> None:
    outcome = attack.host_redirect(target)
    assert (outcome.seen.status_code, outcome.got) == (307, "/ui/")


def test_every_answer_carries_the_security_headers(target: Target) -> None:
    outcome = attack.security_headers(target)
    assert outcome.held, outcome.got


def test_fastapi_docs_pages_are_not_served(target: Target) -> None:
    outcome = attack.docs_pages(target)
    assert set(outcome.seen.values()) == {404}, outcome.got


def test_no_worker_restarted_under_the_catalogue(edge: tuple[Server, Target]) -> None:
    server, target = edge
    assert "exited" not in server.output()
    assert len(target.workers()) == 1 and httpx.get(f"{target.url}/readyz", timeout=60).status_code == 200


# --- the second server: a small file limit, an answer deadline of 50 ms ----------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"TINYSERVE_WORKERS": "1", "TINYSERVE_REQUEST_TIMEOUT": "0.05", "TINYSERVE_IDLE_TIMEOUT": "600"}
    home = tmp_path_factory.mktemp("strict")
    with running(home / "server.log", env, wrapper=("prlimit", "--nofile=256:256")) as server:
        yield server


def test_an_answer_past_its_deadline_is_a_504_in_the_envelope(strict: Server) -> None:
    """An image at the pixel cap takes far more than 50 ms to decode and classify."""
    with httpx.Client(base_url=strict.url, timeout=60) as client:
        r = attack.upload(client, attack.noise_png(2896, 2896))
    assert (r.status_code, r.json()) == (
        504,
        {"error": "no answer within 0.05 s (TINYSERVE_REQUEST_TIMEOUT); it was dropped", "detail": []},
    )
    assert r.headers["x-content-type-options"] == "nosniff"


def test_idle_connections_near_the_file_limit_are_closed_and_logged(strict: Server) -> None:
    """300 idle connections on a worker with 256 files: it closes idle ones, says so, and probes get in.

    Opened 20 at a time, each batch followed by a probe, so that the worker has taken the batch (a burst
    faster than it accepts fills the table first: then only a higher file limit helps).
    """
    target = Target(strict.url)
    probes = []
    with ExitStack() as stack, httpx.Client(base_url=strict.url, timeout=60) as client:
        for _ in range(15):
            for _ in range(20):
                stack.enter_context(closing(attack.connect(target)))
            probes.append(client.get("/livez", headers={"Connection": "close"}).status_code)
    assert probes == [200] * 15
    assert re.search(r"connections: \d+ open in this worker, near the file limit 256; closed \d+ idle", strict.output())


def test_a_killed_worker_is_logged_with_why_and_restarted(strict: Server) -> None:
    (worker,) = psutil.Process(strict.process.pid).children(recursive=True)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=60)
    wait_ready(strict)
    (restarted,) = psutil.Process(strict.process.pid).children(recursive=True)
    assert restarted.pid != worker.pid
    assert re.search(rf"worker \S+ \(pid {worker.pid}\) exited: killed by SIGKILL \(the kernel's OOM", strict.output())
