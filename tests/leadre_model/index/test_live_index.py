"""LiveIndex: catalog events applied to an index and its trie together, in place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leadre_model.errors import BadInputError
from leadre_model.index.live import CatalogEvent, CatalogOp, LiveIndex
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig, SidIndex
from leadre_model.llm.manifest import Manifest

ADD, PAUSE, RESUME = CatalogOp.ADD, CatalogOp.PAUSE, CatalogOp.RESUME
CODES = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])


def _index() -> SidIndex:
    cfg = IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"levels": 2, "codebook_size": 2}))
    return SidIndex([f"ad{i}" for i in range(len(CODES))], CODES.copy(), np.ones(4, bool), cfg)


def _active(live: LiveIndex) -> set[str]:
    """Ad ids the trie still generates (every leaf below the root)."""
    rows = [live.trie.lookup(np.asarray(c)[None])[0] for c in live.index.codes]
    return {live.index.ad_ids[r] for r, on in zip(rows, live.index.active) if r >= 0 and on}


def test_pause_resume_and_adds_keep_index_and_trie_in_step() -> None:
    live = LiveIndex(_index(), vocabulary=[2, 2, 2])
    done = live.apply([
        CatalogEvent(op=PAUSE, ad_id="ad1"),
        CatalogEvent(op=PAUSE, ad_id="ad1"),  # no change: not toggled again
        CatalogEvent(op=ADD, ad_id="new", codes=(0, 1, 1)),
        CatalogEvent(op=ADD, ad_id="new", codes=(0, 1, 1)),  # repeated in the batch: no-op
        CatalogEvent(op=ADD, ad_id="ad0", codes=(0, 0, 0)),  # already indexed, same codes
        CatalogEvent(op=ADD, ad_id="moved", codes=(1, 1, 2)),  # beyond the vocabulary
        CatalogEvent(op=ADD, ad_id="twin", codes=(1, 0, 1)),  # S-ID of ad3
        CatalogEvent(op=ADD, ad_id="bare"),
        CatalogEvent(op=RESUME, ad_id="nobody"),
        CatalogEvent(op=PAUSE, ad_id="new"),
    ])
    reasons = {ev.ad_id: why for ev, why in done.skipped}
    assert set(reasons) == {"moved", "twin", "bare", "nobody"}
    assert "do not fit the model's S-ID vocabulary (level sizes [2, 2, 2])" in reasons["moved"]
    assert "duplicate S-IDs" in reasons["twin"] and reasons["bare"] == "add without codes"
    assert reasons["nobody"] == "unknown ad"
    assert done.added == [4] and done.toggled == [(1, False), (4, False)]
    assert live.index.ad_ids[4] == "new" and live.index.row_by_id["new"] == 4
    assert _active(live) == {"ad0", "ad2", "ad3"}
    live.apply([CatalogEvent(op=RESUME, ad_id="new"), CatalogEvent(op=RESUME, ad_id="ad1")])
    assert _active(live) == {"ad0", "ad1", "ad2", "ad3", "new"}


def test_without_a_vocabulary_levels_grow_and_other_codes_are_refused() -> None:
    live = LiveIndex(_index())
    done = live.apply([CatalogEvent(op=ADD, ad_id="wide", codes=(1, 1, 5)),
                       CatalogEvent(op=ADD, ad_id="short", codes=(1, 1)),
                       CatalogEvent(op=ADD, ad_id="ad0", codes=(1, 1, 0))])
    reasons = {ev.ad_id: why for ev, why in done.skipped}
    assert reasons == {"short": "codes [1, 1] are not 3 levels",
                       "ad0": "already indexed with other codes [0, 0, 0]"}
    assert live.trie.level_sizes[-1] == 6 and live.index.level_sizes[-1] == 6
    with pytest.raises(ValueError, match="duplicate ad ids"):
        live.add(["wide"], np.array([[0, 0, 1]]))
    assert len(live.index) == len(live.trie) == 5  # nothing changed by the refused add


def test_manifest_is_torch_free_typed_and_checks_the_index(tmp_path: Path) -> None:
    code = ("import sys, leadre_model.llm.manifest, leadre_model.index.live; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "leadre-llm", "format_version": 1, "model_version": "m1",
         "index_digest": "a" * 64, "extra": {"train": {"config": {"curriculum": "ex,main"}}}}))
    m = Manifest.read(tmp_path)
    assert m.train_config == {"curriculum": "ex,main"} and m.prompt_config.format == "text"
    m.check_index("a" * 64, tmp_path)
    with pytest.raises(BadInputError, match="trained on S-ID index aaaa.*not on the given index bbbb"):
        m.check_index("b" * 64, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {}}))
    with pytest.raises(BadInputError, match="format None"):
        Manifest.read(tmp_path)
    assert Manifest.read(tmp_path, check_format=False).prompt_config.format == "text"
