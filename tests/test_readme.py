"""The README's commands and snippets, run as a reader runs them, against a real server: the README cannot rot.

Every ```bash and ```python block of README.md is run, in order, unless the line before it is an HTML
comment `<!-- not run by the tests: <why> -->` (set-up commands, long runs, what another test runs).
In a bash block, each command's expected output is the `# ` comment lines right under it; in a python
block, the comment lines under a `print(...)` line. `...` stands for any text, as in doctest. The
server the README talks to (127.0.0.1:3000) is a test server on a free port; commands run in a scratch
directory that sees the repo's `.venv`, `examples/` and `models/`, so nothing lands in the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server import REPO, Server

README = REPO / "README.md"
SKIP = re.compile(r"<!-- not run by the tests: (.+?) -->")
ADDRESS = "127.0.0.1:3000"
GRPC_ADDRESS = "127.0.0.1:8001"  # the gRPC examples' address: the test server's gRPC port


@dataclass
class Step:
    language: str  # bash | python
    code: str
    expected: str | None  # the output the README shows, or None when it shows none
    line: int  # where it stands in README.md

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def _blocks(text: str) -> list[tuple[str, list[str], int]]:
    """(language, lines, first line number) of each fenced block that is not marked to skip."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(bash|python)\s*$", lines[i])
        if fence:
            end = lines.index("```", i + 1)
            skipped = i > 0 and SKIP.search(lines[i - 1])
            if not skipped:
                blocks.append((fence.group(1), lines[i + 1 : end], i + 2))
            i = end
        i += 1
    return blocks


def steps(text: str) -> list[Step]:
    result: list[Step] = []
    for language, lines, first in _blocks(text):
        if language == "python":
            expected = [line[2:] for line in lines if line.startswith("# ")]
            code = "\n".join(line for line in lines if not line.startswith("# "))
            result.append(Step(language, code, "\n".join(expected) if expected else None, first))
            continue
        for offset, line in enumerate(lines):
            if not line.strip() or line.startswith("#"):
                continue
            following = []
            for after in lines[offset + 1 :]:
                if not after.startswith("# "):
                    break
                following.append(after[2:])
            result.append(Step(language, line, "\n".join(following) if following else None, first + offset))
    return result


def matches(expected: str, output: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, output.strip(), flags=re.S) is not None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that looks like the checkout to the README's commands, but is not it."""
    root = tmp_path_factory.mktemp("reader")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in sorted({path.split("/")[0] for path in tracked.splitlines()} | {".venv"}):
        (root / name).symlink_to(REPO / name)  # what the checkout holds, not what earlier runs left in it
    return root


def test_the_readme_has_runnable_steps_with_answers() -> None:
    found = steps(README.read_text())
    assert len(found) >= 10
    assert sum(1 for s in found if s.expected) >= 6  # most examples say what they answer


@pytest.mark.timeout(1800)  # every command of the README, in order, on a fresh copy
def test_every_readme_step_runs_and_answers_as_written(server: Server, scratch: Path) -> None:
    address = server.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSERVE_")}
    for step in steps(README.read_text()):
        code = step.code.replace(ADDRESS, address).replace(GRPC_ADDRESS, server.grpc)
        argv = ["bash", "-c", code] if step.language == "bash" else [str(REPO / ".venv/bin/python"), "-c", code]
        # stdout and stderr in one stream, in the order a terminal shows them
        done = subprocess.run(
            argv, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
        )
        assert done.returncode == 0, f"{step}: {step.code}\n{done.stdout}"
        if step.expected is not None:
            shown = done.stdout.replace(address, ADDRESS)
            assert matches(step.expected, shown), f"{step}: {step.code}\nREADME says:\n{step.expected}\ngot:\n{shown}"
