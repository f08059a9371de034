"""Prompt settings (§4.2): the templates, the 90-day window, the token budget and the
augmentation switches, in one pydantic model per concept.

A template fixes every fixed phrase of a prompt and the order of its middle components
(profile, interest summary, behaviour sequence); the task instruction always opens a prompt
and the question always closes it. ``PAPER_TEMPLATE`` is the paper's wording; the others
are paraphrases for the multiple-template augmentation (§4.2.2).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from leadre_model.configbase import StrictConfig
from leadre_model.prompts.compact import CompactConfig

Component = Literal["profile", "summary", "behaviors"]
# Same string as leadre_model.llm.tokenizer.SOFT_TOKEN (a test checks it); not imported so
# that building prompts (nearline worker) never pulls in transformers.
SOFT_TOKEN = "<|leadre_soft|>"


class PromptTemplate(StrictConfig):
    """Fixed text of one prompt template. ``{soft}`` marks where the learnable token goes
    (exactly once, in ``instruction``); ``{description}`` is the ad text in ``describe``."""

    name: str
    preamble: str = (
        "The following is an instruction describing a task. "
        "Please give a response to complete this request appropriately."
    )
    instruction: str = "[Instruction]:{soft}Assuming you are an ad recommender system, "
    profile_intro: str = ""
    summary_intro: str = (
        "The categories that have been frequently interacted recently are "
        "(format: category^interaction times): "
    )
    sequence_intro: str = (
        "The most recent interaction behavior sequence details "
        "(format: time^behavior type^title) are "
    )
    empty_sequence: str = "none"
    question: str = "what ad will the user be interested in next time?"
    advertiser_question: str = "which advertiser will the user be interested in next time?"
    describe: str = 'given the ad\'s detailed description "{description}", what is the corresponding ad?'
    response: str = "\n[Response]:"
    order: tuple[Component, Component, Component] = ("profile", "summary", "behaviors")

    @model_validator(mode="after")
    def _valid(self) -> PromptTemplate:
        if self.instruction.count("{soft}") != 1:
            raise ValueError(f"template {self.name!r}: instruction needs exactly one {{soft}}")
        if self.describe.count("{description}") != 1:
            raise ValueError(f"template {self.name!r}: describe needs exactly one {{description}}")
        if sorted(self.order) != ["behaviors", "profile", "summary"]:
            raise ValueError(f"template {self.name!r}: order must be a permutation of "
                             "profile, summary, behaviors")
        return self


PAPER_TEMPLATE = PromptTemplate(name="paper")
PARAPHRASES: tuple[PromptTemplate, ...] = (
    PromptTemplate(
        name="engine",
        preamble="Below is a request that describes a task. Write a response that fulfils it.",
        instruction="[Instruction]:{soft}You are the ad retrieval engine of a display "
        "advertising platform. ",
        profile_intro="User profile: ",
        summary_intro="Interest categories with interaction counts (format: category^count): ",
        sequence_intro="Recent positive behaviors, oldest first (format: time^behavior type^title): ",
        question="Which ad is the user most likely to click or convert on next?",
        advertiser_question="Which advertiser is the user most likely to engage with next?",
        describe='An ad is described as follows: "{description}". Which ad is it?',
        order=("profile", "behaviors", "summary"),
    ),
    PromptTemplate(
        name="analyst",
        preamble="Here is a task for you. Answer it with the single best response.",
        instruction="[Instruction]:{soft}Acting as an advertising recommender, read this "
        "user's record. ",
        profile_intro="About the user: ",
        summary_intro="Most engaged categories (format: category^times): ",
        sequence_intro="Engagements in time order (format: days ago^action^item): ",
        question="Predict the ad this user will engage with next.",
        advertiser_question="Predict the advertiser this user will engage with next.",
        describe='Find the ad whose description is "{description}".',
        order=("summary", "profile", "behaviors"),
    ),
)
DEFAULT_TEMPLATES: tuple[PromptTemplate, ...] = (PAPER_TEMPLATE, *PARAPHRASES)


class PromptConfig(StrictConfig):
    """How prompts are built and augmented. Defaults follow §4.2 (90 days, 2096 tokens)."""

    format: Literal["text", "compact"] = Field(
        default="text", description="text: the paper's wording (pretrained LLMs); compact: "
        "every component as a few tokens (models from scratch, leadre_model/prompts/compact.py)")
    compact: CompactConfig = Field(default_factory=CompactConfig)
    window_days: int = Field(default=90, ge=1, description="behaviour sequence window")
    summary_window_days: int | None = Field(
        default=None, ge=1, description="interest summary window; None = all given history")
    token_budget: int = Field(default=2096, ge=16)
    max_behaviors: int = Field(default=50, ge=1, description="newest positive behaviours kept")
    summary_top_n: int = Field(default=5, ge=1)
    ad_summary_category: Literal["l1", "l2"] = Field(
        default="l2", description="ad category counted in the summary; l2 is the level "
        "content items are labelled with in the synthetic world, so both domains merge")
    include_profile: bool = True
    include_summary: bool = True
    include_content: bool = Field(
        default=True, description="False: content behaviours leave the sequence AND summary")
    soft_token: str = Field(default=SOFT_TOKEN, description="'' = no learnable token (Fig. 4a)")
    use_sids_for_ads: bool = Field(
        default=True, description="False: ads in the history by name (implicit alignment)")
    templates: list[PromptTemplate] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES),
                                            min_length=1)
    # Augmentation (§4.2.2); applied to train samples only.
    multi_template: bool = True
    template_copies: int = Field(
        default=1, ge=1, description="with multi_template: samples per target, each with a "
        "different random template (1 = one random template per sample)")
    profile_reorder: bool = True
    positive_reuse: bool = True
    seed: int = 0


# Table 1 ablations, as overrides of a base config.
ABLATIONS: dict[str, dict[str, object]] = {
    "full": {},
    "wo_content": {"include_content": False},
    "wo_summary": {"include_summary": False},
}


def ablation_config(base: PromptConfig, name: str) -> PromptConfig:
    """``base`` with the overrides of ablation ``name`` (one of :data:`ABLATIONS`)."""
    if name not in ABLATIONS:
        raise KeyError(f"unknown ablation {name!r}; expected one of {sorted(ABLATIONS)}")
    return base.model_validate({**base.model_dump(), **ABLATIONS[name]})


__all__ = [
    "ABLATIONS",
    "DEFAULT_TEMPLATES",
    "PAPER_TEMPLATE",
    "PARAPHRASES",
    "SOFT_TOKEN",
    "PromptConfig",
    "PromptTemplate",
    "ablation_config",
]
