"""The retrieve response's plain-dict mirrors (serialised without validation on the hot
path) stay equal to the response models: same fields, same JSON, byte for byte."""

from __future__ import annotations

from services.mixer.merge import merge
from services.mixer.models import (
    RETRIEVE_JSON,
    Consumption,
    ConsumptionDict,
    RetrieveResponse,
    RetrieveResponseDict,
    ServedAd,
    ServedAdDict,
)


def test_the_mirrors_have_the_models_fields() -> None:
    for model, mirror in ((ServedAd, ServedAdDict), (Consumption, ConsumptionDict),
                          (RetrieveResponse, RetrieveResponseDict)):
        assert list(model.model_fields) == list(mirror.__annotations__), model.__name__


def _ad(ad_id: str, score: float, provenance: str) -> dict:
    return {"ad_id": ad_id, "name": f"Name «{ad_id}»", "category": "Pet Care",
            "advertiser_id": "adv_1", "ecpm": 12.5, "score": score, "provenance": provenance}


def test_the_fast_json_is_the_models_json() -> None:
    leadre = [_ad(f"a{i}", -0.1 * (i + 1) - 1e-9, "leadre") for i in range(8)]
    fallback = [_ad("a2", 5145.39, "fallback"), _ad("f1", 147.1, "fallback")]
    for ads, c in (merge(leadre, fallback, 6, 0.75), ([], Consumption())):
        for age in (None, 0.25, 3.0):
            fields = {"user_id": "u0001", "ads": ads, "list_hit": age is not None,
                      "list_version": 2**40, "list_age_s": age, "model_version": "m-ü",
                      "consumption": c.model_dump()}
            assert RETRIEVE_JSON.dump_json(fields) == \
                RetrieveResponse.model_validate(fields).model_dump_json().encode()
