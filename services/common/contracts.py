"""Contracts between serving processes: Redis key names, catalog events, the Triton
model's tensors and the retrieval result. One place, so the inference service, the
nearline worker and the user server cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# A catalog change is a live-index change (leadre_model.index.live); re-exported here as the
# wire contract of CATALOG_STREAM.
from leadre_model.index.live import CatalogEvent, CatalogOp  # noqa: F401 (re-exported)

# --- Triton model `leadre_retrieval` (services/inference) --------------------------------
TRITON_MODEL = "leadre_retrieval"
# Inputs (batch axis first, dynamic batching on):
#   prompt      BYTES [1]  utf-8 prompt text, built by leadre_model.prompts.PromptBuilder
#   beam_width  INT32 [1]  B, beams per level
#   top_k       INT32 [1]  ads returned (<= B)
#   prompt_ids  INT32 [-1], optional: the prompt as token ids instead of text (-1 = padding,
#               so one request can carry prompts of different lengths); exactly one of
#               prompt / prompt_ids per request
#   exclude_ads BYTES [1], optional: space-separated ad ids this row must not return (the
#               ads the user already converted on); masked in the beam search per request
#   advertiser_prompt BYTES [1], optional: the same user's advertiser-task prompt (the
#               builder's advertiser question). Given and the model was trained with the
#               `adv` task: advertisers are decoded through the advertiser trie. Empty or
#               absent: priors = softmax mass of the returned ads summed per advertiser.
# Outputs (padded to top_k; padding: ad_ids b"", scores -inf):
#   ad_ids              BYTES [top_k]
#   scores              FP32  [top_k]   summed full-vocabulary log-probs (llm/decode.py)
#   advertiser_ids      BYTES [top_k]
#   advertiser_scores   FP32  [top_k]
#   model_version       BYTES [1]
IN_PROMPT, IN_BEAM, IN_TOPK, IN_ADV_PROMPT = "prompt", "beam_width", "top_k", "advertiser_prompt"
IN_PROMPT_IDS = "prompt_ids"
IN_EXCLUDE = "exclude_ads"
OUT_ADS, OUT_SCORES = "ad_ids", "scores"
OUT_ADVERTISERS, OUT_ADV_SCORES, OUT_VERSION = "advertiser_ids", "advertiser_scores", "model_version"

# --- Redis keys ---------------------------------------------------------------------------
CATALOG_STREAM = "leadre:{ads}:catalog"  # CatalogEvent entries (appended in one MULTI with
# the acks of leadre:{ads}:updates, hence the tag); every inference instance applies them
INSTANCES_KEY = "leadre:inference:instances"  # hash url -> last heartbeat (unix seconds)
BALANCE_COUNTER = "leadre:inference:rr"  # global round-robin counter (INCR)


class RetrievedAd(BaseModel):
    model_config = ConfigDict(frozen=True)

    ad_id: str
    score: float


class Retrieval(BaseModel):
    """What one prompt gets back from the inference service."""

    model_config = ConfigDict(frozen=True)

    ads: list[RetrievedAd]
    advertisers: list[RetrievedAd] = Field(default_factory=list, description="ad_id = advertiser id")
    model_version: str
