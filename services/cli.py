"""`leadre serve …` and `leadre pipeline …`: the serving processes and the daily cycle.

Shared by the services: each process adds its own command here (small functions that
import their module lazily, so `leadre --help` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from leadre_model.clikit import console, friendly

if TYPE_CHECKING:
    from services.common.settings import Settings

serve_app = typer.Typer(help="Run the serving processes (inference, worker, user server, mixer).",
                        no_args_is_help=True)
pipeline_app = typer.Typer(help="Operational pipelines (the daily training cycle).",
                           no_args_is_help=True)


# --- issue 5: online + nearline processes (settings: LEADRE_* env vars, docs/serving.md#settings) ----
def _settings(**overrides: object) -> Settings:
    from services.common.logs import setup_logging
    from services.common.settings import Settings

    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    setup_logging(s.log_level, s.log_json)
    return s


@serve_app.command("seed")
@friendly
def serve_seed(
    world: Path = typer.Option(..., help="world directory (`leadre data synth`)"),
    users: int | None = typer.Option(None, min=1, help="only the first N users (by id)"),
    histories: bool = typer.Option(True, help="write the users' behaviour histories"),
    flush: bool = typer.Option(False, help="delete every leadre:* key first"),
    model: Path | None = typer.Option(None, help="also publish this model (+ --index) as the "
                                      "first registry version when the registry has none"),
    index: Path | None = typer.Option(None, help="the index the model was trained on"),
) -> None:
    """Seed Redis from a world: profiles + ARPU tiers, ad features + fallback, content,
    histories; optionally publish the first model+index version."""
    from leadre_model.data.store import read_table
    from services.launcher import publish_if_missing, require_redis
    from services.user_server.seed import flush_leadre_keys, seed_world

    s = _settings()
    r = require_redis(s)
    if model is not None:
        version = publish_if_missing(s, model, index, world)
        console.print(f"registry {s.registry_dir}: current version {version}")
    if flush:
        console.print(f"deleted {flush_leadre_keys(r):,} leadre:* keys")
    ids = None
    if users is not None:
        ids = sorted(read_table(world, "users", columns=["user_id"])["user_id"].to_pylist())[:users]
    res = seed_world(r, world, s, users=ids, histories=histories)
    console.print(f"seeded {res.users:,} users, {res.ads:,} ads, {res.content:,} content items, "
                  f"{res.behaviors:,} behaviours → {s.redis_url}")


@serve_app.command("user-server")
@friendly
def serve_user_server(port: int | None = typer.Option(None, help="gRPC port")) -> None:
    """The User Server (gRPC): lists, fallback, behaviours, ad features."""
    import asyncio

    from services.user_server.server import serve

    asyncio.run(serve(_settings(user_server_port=port)))


@serve_app.command("mixer")
@friendly
def serve_mixer(
    http_port: int | None = typer.Option(None, help="HTTP port"),
    grpc_port: int | None = typer.Option(None, help="gRPC port"),
) -> None:
    """The Mixer: HTTP (FastAPI) and gRPC retrieval API + ranking features."""
    import asyncio

    from services.common.versions import feature_index_dir
    from services.mixer.server import serve

    s = _settings(mixer_http_port=http_port, mixer_grpc_port=grpc_port)
    asyncio.run(serve(s, lambda: feature_index_dir(s)))


@serve_app.command("worker")
@friendly
def serve_worker(name: str | None = typer.Option(None, help="consumer name (default hostname)")) -> None:
    """The nearline worker (+ catalog applier): behaviour stream → inference → lists."""
    from services.nearline.run import serve

    serve(_settings(worker_name=name))


@serve_app.command("all")
@friendly
def serve_all(
    world: Path | None = typer.Option(None, help="seed Redis from this world first"),
    model: Path | None = typer.Option(None, help="publish this model (+ --index) if the "
                                      "registry has no version yet"),
    index: Path | None = typer.Option(None, help="the index the model was trained on"),
    instances: int = typer.Option(2, min=1, help="inference instances"),
    base_port: int = typer.Option(8001, help="first inference instance port"),
    log_dir: Path = typer.Option(Path("runs/logs"), help="one log file per process"),
) -> None:
    """Inference instances, worker, user server and mixer as local processes (Redis from
    the Makefile); Ctrl-C or SIGTERM drains and stops them all."""
    from services.launcher import serve_all as run

    run(_settings(), world=world, model=model, index=index, instances=instances,
        base_port=base_port, log_dir=log_dir)


@pipeline_app.command("daily")
@friendly
def pipeline_daily(
    workdir: Path | None = typer.Option(None, help="where the day's files go (default "
                                        "LEADRE_DAILY_WORKDIR/<timestamp>)"),
    publish: bool = typer.Option(True, help="publish when the new version is good enough"),
) -> None:
    """Export Redis state → S-IDs for new ads → continue fine-tuning → evaluate against the
    current version → publish (or refuse, exit 2) a new model+trie version."""
    from services.pipeline.daily import run_daily

    report = run_daily(_settings(), workdir=workdir, publish=publish)
    console.print_json(report.model_dump_json())
    if not report.published and publish:
        raise typer.Exit(2)


# --- issue 4: inference service ----------------------------------------------------------
@serve_app.command("inference")
@friendly
def serve_inference(
    registry: Path | None = typer.Option(None, help="model registry (default LEADRE_REGISTRY_DIR)"),
    instances: int = typer.Option(1, min=1, max=64, help="Triton servers, one process each"),
    base_port: int | None = typer.Option(None, help="instance i: gRPC base+3i, HTTP base+3i+1, "
                                         "metrics base+3i+2 (default LEADRE_INFERENCE_BASE_PORT)"),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N (default "
                                      "LEADRE_DEVICE, auto; with several instances a bare cuda "
                                      "or auto puts one on each GPU)"),
    child: bool = typer.Option(False, "--child", hidden=True, help="started by the launcher"),
) -> None:
    """Triton inference instances (model `leadre_retrieval`) serving the registry's current
    version; hot-swaps new versions, applies catalog events; runs until SIGINT/SIGTERM."""
    from leadre_model.clikit import err_console
    from services.inference.launch import run

    s = _settings(device=device)
    registry = registry or Path(s.registry_dir)
    try:
        run(s, registry, instances, base_port or s.inference_base_port,
            echo=(lambda _: None) if child else (lambda line: console.print(line, highlight=False)))
    except RuntimeError as exc:
        err_console.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
