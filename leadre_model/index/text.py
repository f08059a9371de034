"""Ad text from the feature-mapping template of §3.2."""

from __future__ import annotations

import hashlib
import string

from pydantic import model_validator

from leadre_model.configbase import StrictConfig
from leadre_model.data.records import Ad

# The paper's template; every field of Ad may be referenced by name.
DEFAULT_TEMPLATE = (
    "The name of the ad is {name}; The product type is {product_type}; "
    "The first-level category is {category_l1}; The second-level category is {category_l2}; "
    "The attributes include: {attributes}."
)
TEMPLATE_FIELDS = frozenset(
    {"ad_id", "name", "product_type", "category_l1", "category_l2", "attributes", "advertiser_id"}
)


def check_template(template: str) -> None:
    """Reject unknown placeholders up front instead of failing per ad."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} in ad text template; allowed: {sorted(TEMPLATE_FIELDS)}"
        )


class TextConfig(StrictConfig):
    template: str = DEFAULT_TEMPLATE

    @model_validator(mode="after")
    def _valid(self) -> TextConfig:
        check_template(self.template)
        return self


def ad_text(ad: Ad, template: str = DEFAULT_TEMPLATE) -> str:
    return template.format(
        ad_id=ad.ad_id,
        name=ad.name,
        product_type=ad.product_type,
        category_l1=ad.category_l1,
        category_l2=ad.category_l2,
        attributes=", ".join(ad.attributes) if ad.attributes else "none",
        advertiser_id=ad.advertiser_id,
    )


def text_hash(text: str, model_name: str) -> str:
    """Cache key: the same text under another encoder is a different embedding."""
    return hashlib.sha256(f"{model_name}\x00{text}".encode()).hexdigest()[:32]
