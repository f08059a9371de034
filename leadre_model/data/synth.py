"""Seeded synthetic ad world: catalog, content, users and their behaviours.

The generative model is described in docs/synthetic_world.md. In short: users have a
stable long-term interest distribution over first-level categories (shifted by age,
gender and occupation) and live through *episodes* of a few days, each focused on one
second-level category; some episodes are short, intense bursts of a new need. Content
events fill each episode first and ad clicks come later in it, so recent content carries
real signal about the next ad click.

Users are generated in fixed shards of SHARD_USERS, each with its own RNG derived from
(seed, shard), so the output depends only on the config and memory stays bounded however
many users there are; the write block size only batches shards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from leadre_model.data.records import Ad
from leadre_model.data.store import TableWriter, write_manifest

EPOCH_END = 1_767_225_600  # 2026-01-01T00:00:00Z: every world's window ends here
SHARD_USERS = 2000  # part of the generative definition: changing it changes worlds
GENERATOR_VERSION = 1

from leadre_model.data.synth_vocab import (
    ARTICLE_TITLES,
    AUDIENCES,
    BRAND,
    CONSUMPTION_LEVELS,
    EDUCATION,
    GENDERS,
    OCC_BOOST,
    OCCUPATIONS,
    PRICE_BANDS,
    PRODUCT_TYPES,
    PROMOS,
    RESIDENCES,
    TAXONOMY,
    VIDEO_TITLES,
)

ACTIONS = ("impression", "click", "conversion", "play", "read", "search")  # codes below index it
_IMP, _CLICK, _CONV, _PLAY, _READ, _SEARCH = range(6)
_CLICK_SHARE = 0.3  # of ad-domain events; each click also brings its impression
_CLICK_LEAD = 0.3  # clicks fall after this fraction of their episode: content comes first


class SynthConfig(BaseModel):
    """Everything that defines a synthetic world; same config → identical files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0)
    n_users: int = Field(200, ge=1, le=10_000_000)
    n_ads: int = Field(2000, ge=1, le=50_000_000)
    n_advertisers: int | None = Field(None, ge=1, description="default: n_ads // 8")
    n_content: int = Field(3000, ge=1, le=50_000_000)
    n_categories_l1: int = Field(16, ge=1, le=len(TAXONOMY))
    n_categories_l2_per_l1: int = Field(6, ge=1, le=6)
    days: int = Field(90, ge=1, le=3650)
    mean_events_per_user: float = Field(60.0, gt=0, le=10_000)
    content_share: float = Field(0.6, ge=0, le=0.95, description="share of events in content")
    min_positive_ad_events: int = Field(3, ge=0, le=100, description="clicks per user, at least")
    conversion_rate: float = Field(0.15, ge=0, le=1, description="P(conversion | click)")
    ecpm_sigma: float = Field(1.0, ge=0, le=3, description="lognormal sigma of ad quality")
    paused_fraction: float = Field(0.03, ge=0, le=1)
    interest_concentration: float = Field(1.5, ge=0, le=10, description="std of user logits")
    mean_episode_days: float = Field(8.0, gt=0, le=3650)
    burst_prob: float = Field(0.25, ge=0, le=1, description="P(episode is a short-term burst)")
    burst_intensity: float = Field(3.0, ge=1, le=20, description="event-rate factor in bursts")
    focus: float = Field(0.7, ge=0, le=1, description="share of episode events in its category")

    @model_validator(mode="after")
    def _advertisers_fit(self) -> SynthConfig:
        if self.n_advertisers is not None and self.n_advertisers > self.n_ads:
            raise ValueError(f"n_advertisers ({self.n_advertisers}) exceeds n_ads ({self.n_ads})")
        return self

    @property
    def advertisers(self) -> int:
        return self.n_advertisers or max(1, self.n_ads // 8)


@dataclass(frozen=True)
class _World:
    """Taxonomy and world-level parameters shared by ads, content and users."""

    l1: list[str]
    l2: list[str]  # L1-major: l2 index = l1 * n2 + j
    nouns: list[list[str]]  # per L2
    adjectives: list[list[str]]  # per L1
    main_type: np.ndarray  # per L1, index into PRODUCT_TYPES
    l1_p: np.ndarray  # global popularity of L1
    within: np.ndarray  # (n1, n2) cumulative L2 weights inside each L1
    l2_p: np.ndarray  # global L2 distribution (needs behind bursts, content supply)
    base_ecpm: np.ndarray  # per L1
    affinity: tuple[np.ndarray, np.ndarray, np.ndarray]  # L1 logit shifts by age, gender, job


def _world(cfg: SynthConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    n1, n2 = cfg.n_categories_l1, cfg.n_categories_l2_per_l1
    spec = TAXONOMY[:n1]
    names = [s[0] for s in spec]
    w = rng.dirichlet(np.full(n2, 2.0), size=n1)
    l1_p = rng.dirichlet(np.full(n1, 4.0))
    occ = rng.normal(0, 0.5, (len(OCCUPATIONS), n1))
    for job, cats in OCC_BOOST.items():
        for c in set(cats) & set(names):
            occ[OCCUPATIONS.index(job), names.index(c)] += 1.0
    within = np.cumsum(w, axis=1)
    within[:, -1] = 1.0  # exact, so _rows_choice never spills into the next row
    gender = np.vstack([rng.normal(0, 0.6, (2, n1)), np.zeros((1, n1))])  # unknown: no shift
    return _World(
        l1=names, l2=[n for s in spec for n, _ in s[3][:n2]],
        nouns=[v for s in spec for _, v in s[3][:n2]], adjectives=[s[2] for s in spec],
        main_type=np.array([PRODUCT_TYPES.index(s[1]) for s in spec]), l1_p=l1_p, within=within,
        l2_p=(l1_p[:, None] * w).ravel(), base_ecpm=np.exp(rng.normal(np.log(15.0), 0.5, n1)),
        affinity=(rng.normal(0, 0.8, (4, n1)), gender, occ))


def _rows_choice(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A column per draw from row ``rows[i]`` of a row-wise cumulative matrix (last col = 1).

    Shifting row r by r makes all rows one sorted array: one searchsorted for every draw.
    """
    flat = (cum + np.arange(len(cum))[:, None]).ravel()
    idx = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.minimum(idx - rows * cum.shape[1], cum.shape[1] - 1)


def _pick(cw: np.ndarray, lo: np.ndarray, hi: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Index in [lo, hi) drawn by weight, where ``cw`` is a 0-prefixed cumulative sum.

    Zero-weight entries (paused ads) are never drawn; an empty range falls back to all.
    """
    empty = cw[hi] <= cw[lo]
    lo, hi = np.where(empty, 0, lo), np.where(empty, len(cw) - 1, hi)
    a, b = cw[lo], cw[hi]
    i = np.searchsorted(cw, a + r * (b - a), side="right") - 1
    return np.where(i >= hi, np.searchsorted(cw, b, side="left") - 1, i)


def _ids(prefix: str, start: int, stop: int, total: int) -> list[str]:
    width = max(4, len(str(total - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(start, stop)]


# Product series codes "A1" … "Z99" make names nearly unique, like "ID.3" in the paper.
_SERIES = tuple(f"{chr(65 + m // 99)}{m % 99 + 1}" for m in range(26 * 99))


@dataclass(frozen=True)
class _Catalog:
    """What behaviour generation needs from the ads or content table."""

    ids: pa.Array
    order: np.ndarray  # items sorted by L2
    start: np.ndarray  # per L2: its range in ``order``
    stop: np.ndarray
    cw: np.ndarray  # (rows, n + 1) 0-prefixed cumulative weights in ``order``
    video: np.ndarray | None = None  # content: played (video) or read (article)


def _catalog(ids: list[str], l2: np.ndarray, n_l2: int, weights: np.ndarray,
             video: np.ndarray | None = None) -> _Catalog:
    order = np.argsort(l2, kind="stable")
    cats = np.arange(n_l2)
    cw = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(weights[:, order], axis=1)], axis=1)
    return _Catalog(pa.array(ids), order, np.searchsorted(l2[order], cats),
                    np.searchsorted(l2[order], cats, "right"), cw, video)


def _make_ads(cfg: SynthConfig, w: _World) -> tuple[dict[str, Any], _Catalog]:
    rng = np.random.default_rng([cfg.seed, 2])
    n, n_adv, n1, n2 = cfg.n_ads, cfg.advertisers, len(w.l1), cfg.n_categories_l2_per_l1
    # Advertisers own a couple of ads each, the rest Zipf-distributed; each keeps mostly to
    # one category, one price band and one brand name.
    base = min(2, n // n_adv)
    zipf = 1.0 / np.arange(1, n_adv + 1) ** 0.9
    adv = rng.permutation(np.repeat(np.arange(n_adv),
                                    base + rng.multinomial(n - base * n_adv, zipf / zipf.sum())))
    adv_l1 = rng.choice(n1, n_adv, p=w.l1_p)
    adv_l2 = _rows_choice(rng, w.within, adv_l1)
    adv_band = rng.choice(4, n_adv, p=[0.3, 0.35, 0.25, 0.1])
    adv_q = rng.normal(0, 0.5, n_adv)
    n_brands = len(BRAND[0]) * len(BRAND[1]) * len(BRAND[2])
    combos = rng.permutation(n_brands)[np.arange(n_adv) % n_brands].tolist()
    b1, b2 = len(BRAND[1]) * len(BRAND[2]), len(BRAND[2])
    brands = [BRAND[0][c // b1] + BRAND[1][c % b1 // b2] + BRAND[2][c % b2] for c in combos]
    stray = rng.random(n) > 0.85
    l1 = np.where(stray, rng.choice(n1, n, p=w.l1_p), adv_l1[adv])
    own_l2 = ~stray & (rng.random(n) < 0.6)
    l2 = np.where(own_l2, adv_l2[adv], _rows_choice(rng, w.within, l1)) + l1 * n2
    band = np.clip(adv_band[adv] + (rng.random(n) < 0.3) * rng.choice([-1, 1], n), 0, 3)
    # Heavy-tailed eCPM: category base x advertiser x ad quality (lognormal); popularity
    # (who gets clicked) shares the quality factor, as traffic follows eCPM in an auction.
    quality = rng.normal(0, cfg.ecpm_sigma, n)
    ecpm = np.maximum(np.round(w.base_ecpm[l1] * np.exp(adv_q[adv] + quality), 2), 0.01)
    pctr = np.clip(np.exp(np.log(0.012) + 0.5 * rng.normal(size=n)), 0.001, 0.2)
    bid = np.maximum(np.round(ecpm / (1000 * pctr), 2), 0.01)  # eCPM = 1000 x pCTR x bid
    popularity = np.exp(0.6 * (quality + adv_q[adv]) + 0.8 * rng.normal(size=n))
    paused = rng.random(n) < cfg.paused_fraction
    ptype = np.where(rng.random(n) < 0.75, w.main_type[l1], rng.integers(0, len(PRODUCT_TYPES), n))
    adj, noun, model = rng.integers(0, 6, n), rng.integers(0, 3, n), rng.integers(0, 26 * 99, n)
    audience = rng.integers(0, len(AUDIENCES), n)
    promo = np.where(rng.random(n) < 0.4, rng.integers(0, len(PROMOS), n), -1)

    adv_l, l1_l, l2_l = adv.tolist(), l1.tolist(), l2.tolist()
    names = [f"{brands[a]} {w.adjectives[c][j]} {w.nouns[s][k]} {_SERIES[m]}" for a, c, s, j, k, m
             in zip(adv_l, l1_l, l2_l, adj.tolist(), noun.tolist(), model.tolist())]
    brand_at, band_at = [f"brand_{b}" for b in brands], [f"price band_{b}" for b in PRICE_BANDS]
    aud_at, promo_at = [f"audience_{a}" for a in AUDIENCES], [f"promo_{p}" for p in PROMOS]
    attributes = [[brand_at[a], band_at[b], aud_at[u]] + ([promo_at[p]] if p >= 0 else [])
                  for a, b, u, p in zip(adv_l, band.tolist(), audience.tolist(), promo.tolist())]
    adv_ids = _ids("adv_", 0, n_adv, n_adv)
    cols: dict[str, Any] = {
        "ad_id": _ids("ad_", 0, n, n), "name": names,
        "product_type": [PRODUCT_TYPES[t] for t in ptype.tolist()],
        "category_l1": [w.l1[c] for c in l1_l], "category_l2": [w.l2[c] for c in l2_l],
        "attributes": attributes, "advertiser_id": [adv_ids[a] for a in adv_l],
        "ecpm": ecpm, "bid": bid, "status": np.where(paused, "paused", "active").tolist(),
    }
    # Rows 0-3: click weights per consumption level (popularity x price-band fit); row 4:
    # popularity alone, for the impressions the system pushes. Paused ads weigh nothing.
    live = popularity * ~paused
    fit = np.exp(-1.2 * np.abs(np.arange(4)[:, None] - band[None, :]))
    return cols, _catalog(cols["ad_id"], l2, len(w.l2), np.vstack([fit * live, live]))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Millions of small lists set off repeated GC scans (a third of the time); none cycle."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def synth_ads(cfg: SynthConfig) -> dict[str, np.ndarray | list]:
    """Columns of the ads table only (vectorised: a million ads in seconds)."""
    with _gc_paused():
        return _make_ads(cfg, _world(cfg))[0]


def synth_ad_records(n_ads: int, seed: int = 0) -> list[Ad]:
    """A synthetic catalog as validated records (tests, benchmarks, `index add` demos)."""
    cols = synth_ads(SynthConfig(seed=seed, n_ads=n_ads, n_users=1))
    names = list(cols)
    return [Ad.model_validate(dict(zip(names, row, strict=True)))
            for row in zip(*(list(cols[c]) for c in names), strict=True)]


def _make_content(cfg: SynthConfig, w: _World) -> tuple[dict[str, Any], _Catalog]:
    rng = np.random.default_rng([cfg.seed, 3])
    n, n_l2, n2 = cfg.n_content, len(w.l2), cfg.n_categories_l2_per_l1
    # Every category gets an item before popular ones get more (when there are enough).
    extra = rng.choice(n_l2, max(0, n - n_l2), p=0.5 * w.l2_p + 0.5 / n_l2)
    cat = rng.permutation(np.concatenate([np.arange(min(n, n_l2)), extra]))
    video = rng.random(n) < 0.6
    tmpl, adj, noun = rng.integers(0, 6, n), rng.integers(0, 6, n), rng.integers(0, 3, n)
    spu = np.where(rng.random(n) < 0.5, rng.integers(0, 26 * 99, n), -1)
    titles, spus = [], []
    for c, v, t, j, k, m in zip(cat.tolist(), video.tolist(), tmpl.tolist(), adj.tolist(),
                                noun.tolist(), spu.tolist()):
        title = (VIDEO_TITLES if v else ARTICLE_TITLES)[t].format(
            adj=w.adjectives[c // n2][j], noun=w.nouns[c][k])
        titles.append(title[0].upper() + title[1:])
        spus.append(f"{w.nouns[c][k]} {_SERIES[m]}" if m >= 0 else None)
    cols = {"content_id": _ids("ct_", 0, n, n), "title": titles,
            "category": [w.l2[c] for c in cat.tolist()], "spu": spus}
    return cols, _catalog(cols["content_id"], cat, n_l2, np.exp(rng.normal(0, 1, (1, n))), video)


def _profiles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Demographics; education, job and age drive a latent wealth → consumption, ARPU."""
    age = np.clip(np.round(17 + rng.gamma(2.0, 9.0, n)), 16, 85).astype(np.int16)
    res_p = 1.0 / np.arange(1, len(RESIDENCES) + 1)
    edu = rng.choice(len(EDUCATION), n, p=[0.25, 0.2, 0.38, 0.14, 0.03])
    edu = np.where(age < 22, np.minimum(edu, 2), edu)
    occ = rng.integers(1, len(OCCUPATIONS) - 1, n)
    occ = np.where((age < 23) & (rng.random(n) < 0.75), 0, occ)
    occ = np.where((age >= 62) & (rng.random(n) < 0.8), len(OCCUPATIONS) - 1, occ)
    wealth = rng.normal(size=n) + 0.4 * edu + 0.6 * np.isin(occ, [1, 2]) - 0.8 * (occ == 0)
    level = np.digitize(wealth, [0.2, 1.3, 2.2])
    arpu = np.round(np.exp(np.log([3.0, 8.0, 20.0, 50.0])[level] + 0.9 * rng.normal(size=n)), 2)
    return {"age": age, "gender": rng.choice(3, n, p=[0.48, 0.48, 0.04]),
            "residence": rng.choice(len(RESIDENCES), n, p=res_p / res_p.sum()),
            "education": edu, "occupation": occ, "consumption_level": level, "arpu": arpu}


def _user_shard(cfg: SynthConfig, w: _World, ads: _Catalog, content: _Catalog,
                item_ids: pa.Array, shard: int) -> dict[str, dict[str, Any]]:
    """Users [shard * SHARD_USERS, ...) and their behaviours, sorted by user then time."""
    rng = np.random.default_rng([cfg.seed, 1, shard])
    lo = shard * SHARD_USERS
    n, n2 = min(SHARD_USERS, cfg.n_users - lo), cfg.n_categories_l2_per_l1
    prof = _profiles(rng, n)
    level = prof["consumption_level"]
    # Long-term interests: a stable distribution over L1, shifted by the profile.
    by_age, by_gender, by_job = w.affinity
    logits = (np.log(w.l1_p) + by_age[np.digitize(prof["age"], [25, 35, 50])]
              + by_gender[prof["gender"]] + by_job[prof["occupation"]]
              + cfg.interest_concentration * rng.normal(size=(n, len(w.l1))))
    theta = np.exp(logits - logits.max(axis=1, keepdims=True))
    theta = np.cumsum(theta / theta.sum(axis=1, keepdims=True), axis=1)
    theta[:, -1] = 1.0
    # Episodes partition each user's window, each focused on one L2: long-term ones drawn
    # from theta, bursts from the global needs distribution with a higher event rate.
    k = 1 + rng.poisson(cfg.days / cfg.mean_episode_days, n)
    first = np.cumsum(k) - k
    last = first + k - 1
    cut_user = np.repeat(np.arange(n), k - 1)
    cuts = rng.random(len(cut_user)) * cfg.days
    starts = np.zeros(k.sum())
    inner = np.ones(len(starts), bool)
    inner[first] = False
    starts[inner] = cuts[np.lexsort((cuts, cut_user))]
    ends = np.append(starts[1:], 0.0)
    ends[last] = cfg.days
    burst = rng.random(len(starts)) < cfg.burst_prob
    ep_l1 = _rows_choice(rng, theta, np.repeat(np.arange(n), k))
    ep_l2 = np.where(burst, rng.choice(len(w.l2), len(starts), p=w.l2_p),
                     ep_l1 * n2 + _rows_choice(rng, w.within, ep_l1))
    weight = (ends - starts) * np.where(burst, cfg.burst_intensity, 1.0)
    cw = np.cumsum(weight)
    before = cw[first] - weight[first]
    total = cw[last] - before

    def in_episodes(counts: np.ndarray, lead: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users, times (days) and L2s of events spread over episodes by their weight."""
        user = np.repeat(np.arange(n), counts)
        u = before[user] + rng.random(len(user)) * total[user]
        ep = np.clip(np.searchsorted(cw, u, side="right"), first[user], last[user])
        t = starts[ep] + (ends[ep] - starts[ep]) * (lead + (1 - lead) * rng.random(len(user)))
        bg_l1 = _rows_choice(rng, theta, user)
        background = bg_l1 * n2 + _rows_choice(rng, w.within, bg_l1)
        return user, t, np.where(rng.random(len(user)) < cfg.focus, ep_l2[ep], background)

    def anywhere(cat: _Catalog, row: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Users and items of impressions the system pushes regardless of interest."""
        user = np.repeat(np.arange(n), counts)
        m = len(cat.order)
        pos = _pick(cat.cw[row], np.zeros(len(user), int), np.full(len(user), m), rng.random(len(user)))
        return user, cat.order[pos]

    events = cfg.mean_events_per_user * np.exp(0.6 * rng.normal(size=n) - 0.18)  # mean 1 factor
    m_ad, m_ct = (1 - cfg.content_share) * events, cfg.content_share * events
    n_click = np.maximum(cfg.min_positive_ad_events, rng.poisson(_CLICK_SHARE * m_ad))
    n_ad_imp = rng.poisson(max(0.0, 1 - _CLICK_SHARE * (2 + cfg.conversion_rate)) * m_ad)
    # Content: engagement inside episodes (play/read, some search/click), plus feed impressions.
    cu, ct, ccat = in_episodes(rng.poisson(0.75 * m_ct), 0.0)
    citem = content.order[_pick(content.cw[0], content.start[ccat], content.stop[ccat],
                                rng.random(len(cu)))]
    r = rng.random(len(cu))
    assert content.video is not None
    cact = np.where(r < 0.1, _SEARCH,
                    np.where(r < 0.15, _CLICK, np.where(content.video[citem], _PLAY, _READ)))
    iu, iitem = anywhere(content, 0, rng.poisson(0.25 * m_ct))
    # Ad clicks: late in episodes, by popularity x price-band fit; each is preceded by its
    # impression and sometimes followed by a conversion.
    ku, kt, kcat = in_episodes(n_click, _CLICK_LEAD)
    kpos, kr = np.zeros(len(ku), int), rng.random(len(ku))
    for lvl in range(len(CONSUMPTION_LEVELS)):
        m = level[ku] == lvl
        kpos[m] = _pick(ads.cw[lvl], ads.start[kcat[m]], ads.stop[kcat[m]], kr[m])
    kad = ads.order[kpos]
    conv = rng.random(len(ku)) < cfg.conversion_rate
    nu, nad = anywhere(ads, 4, n_ad_imp)

    start, end = EPOCH_END - cfg.days * 86_400, EPOCH_END - 1

    def secs(t_days: np.ndarray) -> np.ndarray:
        return np.clip(start + np.floor(t_days * 86_400).astype(np.int64), start, end)

    kts = secs(kt)
    n_ads = cfg.n_ads  # item index into item_ids: ads first, then content
    parts = [  # (user, ts, domain 0=ad 1=content, action, item, funnel rank for equal ts)
        (cu, secs(ct), 1, cact, n_ads + citem, 1),
        (iu, secs(rng.random(len(iu)) * cfg.days), 1, _IMP, n_ads + iitem, 0),
        (ku, kts, 0, _CLICK, kad, 1),
        (ku, np.maximum(kts - rng.integers(2, 60, len(ku)), start), 0, _IMP, kad, 0),
        (ku[conv], np.minimum(kts[conv] + rng.integers(60, 6 * 3600, conv.sum()), end), 0,
         _CONV, kad[conv], 2),
        (nu, secs(rng.random(len(nu)) * cfg.days), 0, _IMP, nad, 0),
    ]
    user, ts, dom, act, item, rank = (
        np.concatenate([np.broadcast_to(np.asarray(p[i]), len(p[0])) for p in parts])
        for i in range(6))
    o = np.lexsort((rank, ts, user))
    user_ids = pa.array(_ids("u", lo, lo + n, cfg.n_users))
    vocab = {"gender": GENDERS, "residence": RESIDENCES, "education": EDUCATION,
             "occupation": OCCUPATIONS, "consumption_level": CONSUMPTION_LEVELS}
    users = {k: pa.array(vocab[k]).take(v) if k in vocab else v for k, v in prof.items()}
    return {
        "users": {"user_id": user_ids, **users},
        "behaviors": {"user_id": user_ids.take(user[o]), "ts": ts[o],
                      "domain": pa.array(["ad", "content"]).take(dom[o]),
                      "action": pa.array(ACTIONS).take(act[o]), "item_id": item_ids.take(item[o])},
    }


def _concat(parts: list[Any]) -> Any:
    return pa.concat_arrays(parts) if isinstance(parts[0], pa.Array) else np.concatenate(parts)


def generate_world(out: Path, cfg: SynthConfig, progress: bool = True,
                   block_users: int = 20_000) -> dict[str, Any]:
    """Write ads, content, users and behaviors Parquet tables plus world.json into ``out``.

    Users are generated shard by shard and written ``block_users`` at a time, so memory is
    bounded by the block, not the world; the block size does not change the output. All
    four tables stay temporary files until every one is complete, so a failure midway
    leaves ``out`` as it was.
    """
    out = Path(out)
    w = _world(cfg)
    with _gc_paused():
        ad_cols, ads = _make_ads(cfg, w)
        content_cols, content = _make_content(cfg, w)
    item_ids = pa.concat_arrays([ads.ids, content.ids])
    n_shards = -(-cfg.n_users // SHARD_USERS)
    per_block = max(1, -(-block_users // SHARD_USERS))
    with ExitStack() as stack:
        writers = {k: stack.enter_context(TableWriter(out, k))
                   for k in ("ads", "content", "users", "behaviors")}
        writers["ads"].write_columns(ad_cols)
        writers["content"].write_columns(content_cols)
        del ad_cols, content_cols  # the catalog's Python strings are not needed any more
        bar = stack.enter_context(tqdm(total=cfg.n_users, unit="user", desc="synthetic users",
                                       disable=not progress))
        for b0 in range(0, n_shards, per_block):
            shards = [_user_shard(cfg, w, ads, content, item_ids, s)
                      for s in range(b0, min(b0 + per_block, n_shards))]
            for kind in ("users", "behaviors"):
                writers[kind].write_columns(
                    {c: _concat([s[kind][c] for s in shards]) for c in shards[0][kind]})
            bar.update(sum(len(s["users"]["user_id"]) for s in shards))
    n2 = cfg.n_categories_l2_per_l1
    manifest = {
        "source": "synthetic", "generator_version": GENERATOR_VERSION,
        "config": cfg.model_dump(mode="json"),
        "counts": {k: wr.rows for k, wr in writers.items()},
        "window": {"start": EPOCH_END - cfg.days * 86_400, "end": EPOCH_END},
        "taxonomy": {l1: w.l2[i * n2:(i + 1) * n2] for i, l1 in enumerate(w.l1)},
    }
    write_manifest(out, manifest)
    return manifest
