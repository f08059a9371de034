"""`leadre demo`'s last step: the live system on the demo's model and index.

Publishes the model + index as a registry version, seeds Redis from the demo world with
each user's newest behaviours held out, starts inference instances, worker, user server
and mixer as local processes, replays the held-out behaviours of a sample of users through
the User Server, waits until their lists are fresh, prints a few users through the Mixer's
HTTP API, and stops everything (SIGTERM, each process drains).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.launcher import LocalStack, StackError, free_port, free_port_block
from services.replay import post_behaviors, wait_fresh
from services.user_server.seed import flush_leadre_keys, seed_world


def live_settings(workdir: Path, base: Settings | None = None) -> Settings:
    """The environment's settings (Redis, …) with the demo's directories and free ports."""
    s = (base or Settings()).model_copy(update={
        "registry_dir": str(workdir / "registry"), "live_index_dir": str(workdir / "live_index"),
        "inference_log_dir": str(workdir / "logs"), "bind_host": "127.0.0.1",
        "user_server_port": free_port(), "mixer_http_port": free_port(),
        "mixer_grpc_port": free_port(), "user_metrics_port": 0, "worker_metrics_port": 0,
        "list_beam_width": 10, "list_size": 10, "worker_claim_idle_ms": 5000})
    return s.model_copy(update={"user_server_addr": f"127.0.0.1:{s.user_server_port}"})


def run_live_demo(workdir: Path, console: Console, n_users: int = 60, holdout: int = 3,
                  show: int = 5, instances: int = 2, seed: int = 0) -> None:
    from services.inference.registry import publish_version

    s = live_settings(workdir)
    for d in (s.registry_dir, s.live_index_dir):
        shutil.rmtree(d, ignore_errors=True)
    r = redis_client(s)
    flush_leadre_keys(r)
    version = publish_version(s.registry_dir, workdir / "model", workdir / "index",
                              world=workdir / "world")
    seeded = seed_world(r, workdir / "world", s, holdout=holdout)
    users = sorted({b.user_id for b in seeded.held_out})
    users = sorted(random.Random(seed).sample(users, min(n_users, len(users))))
    events = [b for b in seeded.held_out if b.user_id in set(users)]
    console.print(f"registry version {version}; Redis {s.redis_url} seeded with {seeded.users:,} "
                  f"users, {seeded.ads:,} ads, {seeded.behaviors:,} behaviours")

    stack = LocalStack(s, instances=instances, base_port=free_port_block(3 * instances),
                       log_dir=workdir / "logs")
    try:
        t0 = time.monotonic()
        stack.start()
        with console.status(f"starting inference × {instances}, worker, user server, mixer"):
            stack.wait_ready(s.inference_startup_s)
        console.print(f"all processes ready in {time.monotonic() - t0:.0f} s "
                      f"(logs: {workdir / 'logs'})")
        t0 = time.monotonic()
        post_behaviors(s.user_server_addr, events)
        with console.status(f"{len(events)} behaviour events of {len(users)} users posted; "
                            "waiting for fresh lists"):
            try:
                fresh = wait_fresh(r, users, timeout_s=600)
            except TimeoutError as exc:
                raise StackError(f"{exc}; see {workdir / 'logs'}") from None
        console.print(f"{len(events)} events for {len(users)} users → every list fresh "
                      f"{max(fresh.values()) - t0:.1f} s after the first post")
        _show_users(s, users[:show], console)
    finally:
        codes = stack.stop()
        console.print(f"stopped (SIGTERM, drained): {codes}")


def _show_users(s: Settings, users: list[str], console: Console, k: int = 8) -> None:
    base = f"http://127.0.0.1:{s.mixer_http_port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        for u in users:
            user = http.get(f"/v1/users/{u}", params={"recent": 5}).json()
            got = http.post("/v1/retrieve", json={"user_id": u, "k": k}).json()
            p = user["profile"]
            console.rule(f"user {u}")
            console.print(f"{p['age']}-year-old {p['gender']}, {p['residence']}, {p['occupation']}, "
                          f"{p['consumption_level']} consumption, ARPU {p['arpu']:.2f} (tier {p['tier']})",
                          highlight=False)
            recent = Table(title="newest behaviours", title_justify="left")
            for col in ("time", "action", "item"):
                recent.add_column(col)
            for b in user["recent"]:
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["ts"]))
                recent.add_row(when, f"{b['domain']} {b['action']}", b["item_name"] or b["item_id"])
            console.print(recent)
            age = got["list_age_s"]
            ads = Table(title=f"POST /v1/retrieve k={k} → list v{got['list_version']}, "
                        f"{age:.1f} s old" if got["list_hit"]
                        else "POST /v1/retrieve → no LEADRE list (fallback only)",
                        title_justify="left")
            # Each branch scores on its own scale (ServedAd.score): never one column for both.
            for col in ("#", "ad", "name", "category", "from"):
                ads.add_column(col)
            ads.add_column("LEADRE log-prob", justify="right")
            ads.add_column("fallback eCPM × popularity", justify="right")
            for i, a in enumerate(got["ads"], 1):
                leadre = a["provenance"] == "leadre"
                ads.add_row(str(i), a["ad_id"], a["name"], a["category"],
                            a["provenance"] + (f" (also {'fallback' if leadre else 'leadre'})"
                                               if a["also_in_other_branch"] else ""),
                            f"{a['score']:.2f}" if leadre else "",
                            "" if leadre else f"{a['score']:,.2f}")
            console.print(ads)
            console.print(f"model {got['model_version']}; served per branch {got['consumption']}",
                          highlight=False)
