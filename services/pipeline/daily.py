"""`leadre pipeline daily` (§4.4.1 "Training"): the day's Redis state becomes the next
served version.

1. **Export** users, ads, content and every user's behaviour history from Redis into a
   world directory (the offline Parquet format).
2. **S-IDs for new ads**: the live index (the catalog applier's; else the served version's)
   is copied and ``add_ads`` gives every exported ad not yet indexed its S-ID with the
   trained RQ-VAE — existing S-IDs never change — and syncs paused/active.
3. **Continue fine-tuning** the served model on the exported world (its own TrainConfig,
   ``daily_epochs``, at most ``daily_max_samples_per_task`` samples per task); S-ID
   tokens the new index needs are added to the vocabulary.
4. **Evaluate** the new model against the served one on the same leave-one-out split of
   the export (``daily_metric`` on ``daily_eval_users`` test users).
5. **Publish** to the registry (inference instances hot-swap) unless the new score is
   below the served one by more than ``daily_margin``; then nothing is published.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel

from leadre_model.data.records import Ad, Behavior, ContentItem, User
from leadre_model.data.store import WorldWriter
from leadre_model.errors import BadInputError, UsageError
from services.common import keys
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.common.userstate import parse_member
from services.common.versions import current_version_dir

if TYPE_CHECKING:
    from leadre_model.index.sid_index import SidIndex

log = logging.getLogger(__name__)


class DailyReport(BaseModel):
    workdir: str
    previous_version: str
    new_version: str | None = None
    published: bool = False
    reason: str = ""
    exported: dict[str, int] = {}
    new_ads: int = 0
    # Ad texts behind the new S-IDs: run through the encoder vs served from the embedding
    # cache (by text hash, kept across days beside the day directories); ads already indexed
    # keep their S-IDs and are not embedded again.
    embedding: dict[str, int] = {}
    metric: str
    previous_score: float | None = None
    new_score: float | None = None
    margin: float
    timings: dict[str, float] = {}


def export_world(r: redis.Redis, out: Path) -> dict[str, int]:
    """Redis state → a world directory; returns the row counts."""
    with WorldWriter(out) as w:
        for _, raw in r.hscan_iter(keys.ADS, count=1000):
            w.add("ads", Ad.model_validate_json(raw))
        for _, raw in r.hscan_iter(keys.CONTENT, count=1000):
            w.add("content", ContentItem.model_validate_json(raw))
        users = set(r.smembers(keys.USERS))
        users |= {k.split("{", 1)[1].split("}", 1)[0] for k in r.scan_iter("leadre:u:*:hist", count=1000)}
        for uid in sorted(users):
            profile = r.get(keys.user_key(uid, "profile"))
            w.add("users", User.model_validate_json(profile) if profile else User(user_id=uid))
            for m in r.zrange(keys.user_key(uid, "hist"), 0, -1):
                b: Behavior = parse_member(uid, m)
                w.add("behaviors", b)
        w.manifest = {"source": "redis", "exported": datetime.now(UTC).isoformat(timespec="seconds")}
    return dict(w.counts)


def index_new_ads(source: Path, work: Path, ads: Sequence[Ad]) -> SidIndex:
    """Copy the index ``source`` to ``work/index`` and give the ads not in it their S-IDs
    (``add_ads``). The embedding cache lies beside the day directories, so a text embedded
    on an earlier day (or by an earlier try of this day) is served from it, not re-embedded;
    ``stats["last_add"]`` of the result counts both."""
    from leadre_model.index.build import add_ads

    shutil.rmtree(work / "index", ignore_errors=True)
    shutil.copytree(source, work / "index")
    index, _ = add_ads(work / "index", ads, cache_path=work.parent / "embeddings.npz",
                       progress=False)
    return index


def continue_training(prev_model: Path, world: Path, index_dir: Path, out: Path,
                      settings: Settings) -> dict[str, Any]:
    """Fine-tune the served model further on ``world`` (see module doc) on the device of
    ``settings.device``; saves to ``out``."""
    from leadre_model.device import describe, resolve_device
    from leadre_model.index.sid_index import load_index
    from leadre_model.index.sids import sid_vocabulary
    from leadre_model.llm.manifest import Manifest
    from leadre_model.llm.model import build_model, save_model
    from leadre_model.prompts.tasks import build_samples
    from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig, cap_samples
    from leadre_model.train.sft import parse_curriculum, run_curriculum, strip_lm

    manifest = Manifest.read(prev_model)
    if manifest.members:  # continuing member 0 alone would serve a lesser model, unasked
        raise BadInputError(f"{prev_model}: an ensemble of {1 + len(manifest.members)} models; "
                            "the daily run continues one model only: retrain it with "
                            "`leadre train` and publish that")
    saved = manifest.train_config
    cfg = TrainConfig.model_validate(saved) if saved else TRAIN_PRESETS["demo"]
    index = load_index(index_dir)
    curriculum = strip_lm(cfg.curriculum)  # the served model already is a language model
    tasks = sorted({t for stage in parse_curriculum(curriculum) for t in stage})
    samples = build_samples(world, index, cfg.prompts, tasks, "train")
    by_task = {t: cap_samples([s for s in samples if s["task"] == t],
                              settings.daily_max_samples_per_task, cfg.sft.seed) for t in tasks}
    model, tok = build_model(cfg.llm.model_copy(update={"base": str(prev_model)}),
                             new_tokens=sid_vocabulary(index.level_sizes))
    sft = cfg.sft.model_copy(update={"epochs": settings.daily_epochs})
    device = resolve_device(settings.device)
    model.to(device)
    logs = run_curriculum(model, tok, by_task, curriculum, sft, progress=False)
    summary = {"config": cfg.model_dump(), "continued_from": manifest.model_version,
               "sft": logs, "samples": {t: len(v) for t, v in by_task.items()},
               "device": describe(device)}
    save_model(model, tok, out, index.digest(), extra={"train": summary})
    return summary


def evaluate_pair(world: Path, previous: Path, new: Path, settings: Settings) -> tuple[float, float]:
    """``daily_metric`` of the served version and of the new one on the same split."""
    from leadre_model.device import resolve_device
    from leadre_model.eval.harness import EvalConfig, evaluate
    from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever

    lcfg, device = LeadreEvalConfig(progress=False), resolve_device(settings.device)
    retrievers = [LeadreRetriever(name, d / "model", d / "index", world, lcfg, device=device)
                  for name, d in (("previous", previous), ("new", new))]
    res = evaluate(world, retrievers, EvalConfig(max_test_users=settings.daily_eval_users,
                                                 progress=False))
    figures = res["retrievers"]
    if settings.daily_metric not in figures["new"]:
        raise UsageError(f"daily_metric {settings.daily_metric!r} is not a figure of the "
                         f"harness; choose one of {sorted(figures['new'])}")
    return float(figures["previous"][settings.daily_metric]), float(figures["new"][settings.daily_metric])


def decide(metric: str, previous: float, new: float, margin: float) -> tuple[bool, str]:
    """Publish unless the new score is below the served one by more than ``margin``."""
    if new < previous - margin:
        return False, (f"refused: {metric} {new:.4f} is below the served version's "
                       f"{previous:.4f} by more than {margin:g}")
    return True, f"{metric} {new:.4f} vs served {previous:.4f} (margin {margin:g})"


def run_daily(settings: Settings, workdir: Path | None = None, publish: bool = True) -> DailyReport:
    from leadre_model.data.store import load_ads
    from leadre_model.index.sid_index import load_index
    from services.inference.registry import publish_version

    registry = Path(settings.registry_dir)
    previous = current_version_dir(registry)
    if previous is None:
        raise UsageError(f"{registry}: no current version to continue from; publish one first")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(workdir or Path(settings.daily_workdir) / stamp)
    work.mkdir(parents=True, exist_ok=True)
    report = DailyReport(workdir=str(work), previous_version=previous.name,
                         metric=settings.daily_metric, margin=settings.daily_margin)
    t = report.timings

    t0 = time.perf_counter()
    r = redis_client(settings)
    report.exported = export_world(r, work / "world")
    t["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    live = Path(settings.live_index_dir)
    source = live if (live / "index.json").exists() else previous / "index"
    index = index_new_ads(source, work, load_ads(work / "world"))
    report.embedding = index.stats["last_add"]
    report.new_ads = len(index) - len(load_index(previous / "index"))
    t["index_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    continue_training(previous / "model", work / "world", work / "index", work / "model", settings)
    t["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report.previous_score, report.new_score = evaluate_pair(work / "world", previous, work, settings)
    t["eval_s"] = time.perf_counter() - t0

    good, report.reason = decide(report.metric, report.previous_score, report.new_score,
                                 settings.daily_margin)
    if good and publish:
        report.new_version = publish_version(registry, work / "model", work / "index",
                                             world=work / "world")
        report.published = True
    elif good:
        report.reason += "; not published (--no-publish)"
    (work / "report.json").write_text(json.dumps(report.model_dump(), indent=2))
    log.info("daily pipeline done", extra=report.model_dump())
    return report
