"""Process settings from environment variables (prefix ``LEADRE_``), one place for all.

Later services add their fields here; the README's settings table lists them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADRE_", extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    data_dir: str = Field(default="runs/demo", description="world + index used by services")
