"""`tinyserve-score MODEL INPUT OUTPUT [options]` (also `python -m client`).

Only option parsing lives here; the work is `client.Scorer`. Every option also reads an environment
variable (TINYSERVE_SCORE_<OPTION>), shown in --help.

Exit codes: 0 every row scored; 1 some rows failed (error records in the output); 2 the run stopped
(server unreachable after the retries, bad arguments or files): rerun with --resume where rows were kept;
3 the server refused the API token; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from client.backends import AuthenticationFailed, ServerUnavailable, default_models_dir
from client.formats import FormatError
from client.scorer import ResumeError, Scorer, Summary
from modelrepo import ModelRepositoryError


def _option(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """click.option with an environment-variable fallback named after the option, shown in --help."""
    env = "TINYSERVE_SCORE_" + names[0].lstrip("-").replace("-", "_").upper()
    return click.option(*names, envvar=env, show_envvar=True, show_default=True, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("model")
@click.argument("input_path", metavar="INPUT")
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path, dir_okay=False))
@_option("--url", multiple=True, help="server to score against, e.g. http://127.0.0.1:3000 (several: --engine ray)")
@_option("--local", is_flag=True, default=False, help="run ONNX Runtime in this process; no server")
@_option(
    "--models",
    "models_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="model repository for --local [default: TINYSERVE_MODELS_DIR, else the models/ the service serves]",
)
@_option(
    "--protocol",
    type=click.Choice(["v2", "grpc", "json"]),
    default="v2",
    help="v2: Open Inference Protocol with binary tensors; grpc: the same over gRPC (the URL's host, --grpc-port); "
    "json: the typed /v1 routes",
)
@_option("--grpc-port", type=click.IntRange(1, 65535), default=8001, help="the server's gRPC port, for --protocol grpc")
@_option("--chunk-size", type=click.IntRange(1), default=1024, help="rows per request")
@_option("--concurrency", type=click.IntRange(1, 64), default=4, help="requests in flight at once")
@_option("--timeout", type=click.FloatRange(0.1), default=30.0, help="seconds to wait for one response")
@_option(
    "--retries",
    type=click.IntRange(0),
    default=5,
    help="retries per request on connection errors, timeouts, 429, 502, 503 and 504",
)
@_option(
    "--backoff",
    type=click.FloatRange(0.0),
    default=0.5,
    help="first retry waits up to this many seconds, doubling each time (with jitter)",
)
@_option("--token", help="API token, sent as 'Authorization: Bearer <token>'")
@_option(
    "--columns",
    help="CSV/Parquet feature columns, by name or 0-based position, comma-separated (default: every column)",
)
@_option("--resume", is_flag=True, default=False, help="continue an interrupted run into the same OUTPUT")
@_option("--quiet", "-q", is_flag=True, default=False, help="no progress, only the summary")
@_option(
    "--engine",
    type=click.Choice(["threads", "ray"]),
    default="threads",
    help="threads: this process, --concurrency requests at once; ray: Ray Data, an actor pool (pip install "
    "'.[ray]' in the checkout); INPUT may then be a directory, a glob or a URI",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    show_envvar=True,
    help="--engine ray: the Ray cluster to join (default: a local Ray with this machine's cores)",
)
@_option(
    "--actors",
    type=click.IntRange(1),
    help="--engine ray: actors in the pool [default: CPUs with --local, --concurrency with --url]",
)
def main(
    model: str,
    input_path: str,
    output_path: Path,
    url: tuple[str, ...],
    local: bool,
    models_dir: Path | None,
    protocol: str,
    grpc_port: int,
    chunk_size: int,
    concurrency: int,
    timeout: float,
    retries: int,
    backoff: float,
    token: str | None,
    columns: str | None,
    resume: bool,
    quiet: bool,
    engine: str,
    ray_address: str | None,
    actors: int | None,
) -> None:
    """Score INPUT (.npy, .csv, .jsonl, .parquet) with MODEL into OUTPUT (.jsonl, .csv, .npy, .parquet).

    One record per input row, in input order, with its row index; a bad row becomes an error record
    in its place and the run goes on.
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    if bool(url) == local:
        raise click.UsageError("give either --url URL or --local")
    if engine == "threads" and len(url) > 1:
        raise click.UsageError("several --url need --engine ray")
    if engine == "ray" and resume:
        raise click.UsageError("--resume is for --engine threads: Ray retries failed chunks within a run")
    scorer = Scorer(
        model=model,
        url=url[0] if url else None,
        local=local,
        models_dir=models_dir or default_models_dir(),
        protocol=protocol,
        grpc_port=grpc_port,
        chunk_size=chunk_size,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        token=token,
        columns=[c.strip() for c in columns.split(",")] if columns else None,
        quiet=quiet,
    )
    try:
        if engine == "ray":
            summary = _score_on_ray(scorer, input_path, output_path, list(url), ray_address, actors)
        else:
            summary = scorer.score_file(Path(input_path), output_path, resume=resume)
    except ServerUnavailable as e:
        parts = output_path.with_name(output_path.name + ".parts")
        kept = len(list(parts.glob("*.jsonl"))) if parts.is_dir() else 0
        then = (
            f"{kept} finished chunks are kept in {parts}: rerun with --resume to continue"
            if kept
            else "nothing was scored: rerun once the server answers"
        )
        click.echo(f"error: server unavailable: {e}\n{then}", err=True)
        sys.exit(2)
    except AuthenticationFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    except (FormatError, ResumeError, ModelRepositoryError, ValueError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the finished chunks are kept; rerun with --resume to continue", err=True)
        sys.exit(130)
    finally:
        scorer.close()
    click.echo(summary.line(), err=True)
    sys.exit(1 if summary.rows_failed else 0)


def _score_on_ray(
    scorer: Scorer, source: str, output: Path, urls: list[str], address: str | None, actors: int | None
) -> Summary:
    from client.ray_engine import RayEngine, RayRunError

    try:
        return RayEngine(scorer, urls=urls, address=address, actors=actors).score(source, output)
    except ServerUnavailable as e:  # nothing is kept: OUTPUT appears only when every chunk is scored
        click.echo(f"error: server unavailable: {e}\nno output was written: rerun once the server is back", err=True)
    except RayRunError as e:
        click.echo(f"error: {e}", err=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: no output was written", err=True)
        sys.exit(130)
    sys.exit(2)


if __name__ == "__main__":
    main()
