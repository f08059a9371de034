"""Process settings from environment variables (prefix ``LEADRE_``), one place for all.

Later services add their fields here; docs/serving.md#settings lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from leadre_model.device import DeviceSpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADRE_", extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")

    # --- online + nearline services (issue 5); docs/serving.md#settings lists every field -------
    registry_dir: str = Field(default="runs/registry", description="model+index versions")
    live_index_dir: str = Field(default="runs/live_index",
                                description="index with the ads added since the last version")
    bind_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_json: bool = True
    # user server
    user_server_addr: str = Field(default="127.0.0.1:50061", description="dialled by the mixer")
    user_server_port: int = Field(default=50061, ge=0, le=65535)
    user_server_drain_s: float = Field(default=30.0, ge=0, description="SIGTERM: in-flight "
                                       "gRPC calls the user server finishes")
    user_metrics_port: int = Field(default=9102, ge=0, le=65535)
    list_ttl_s: int = Field(default=7 * 86_400, ge=1)
    history_max: int = Field(default=500, ge=1)
    history_window_days: int = Field(default=90, ge=1)
    user_max_batch: int = Field(default=1000, ge=1)
    behavior_stream_maxlen: int = Field(default=1_000_000, ge=1000)
    # partitioned ingest (issue 22): behaviour events go to N streams by a hash of the user,
    # each stream in its own slot (keys.behavior_streams); workers consume every partition
    behavior_partitions: int = Field(default=1, ge=1, le=256)
    # RecordBehaviors answers only once this many replicas hold its writes (WAIT; 0: off);
    # short of them within the timeout it answers UNAVAILABLE (a retry is idempotent)
    durable_replicas: int = Field(default=0, ge=0, le=16)
    durable_timeout_ms: int = Field(default=1000, ge=1)
    fallback_categories: int = Field(default=3, ge=1)
    hot_cache_ttl_s: float = Field(default=1.0, ge=0, description="user server: how stale the "
                                   "cached top of a fallback ranking may be")
    hot_cache_max_items: int = Field(default=1_000_000, ge=1, description="user server: ad "
                                     "records / content categories held before the cache resets")
    # mixer
    mixer_http_port: int = Field(default=8080, ge=0, le=65535)
    mixer_grpc_port: int = Field(default=50051, ge=0, le=65535)
    mixer_max_k: int = Field(default=100, ge=1)
    mixer_max_candidates: int = Field(default=500, ge=1)
    mixer_leadre_share: float = Field(default=0.75, ge=0, le=1)
    mixer_timeout_s: float = Field(default=1.0, gt=0)
    mixer_drain_s: float = Field(default=30.0, ge=0, description="SIGTERM: in-flight "
                                 "HTTP/gRPC requests the Mixer finishes")
    mixer_list_source: Literal["redis", "grpc"] = Field(
        default="redis", description="redis: read lists in process (one round trip); grpc: "
        "through the user server (services/mixer/sources.py)")
    # nearline worker
    worker_name: str | None = Field(default=None, description="consumer name; default hostname")
    worker_read_count: int = Field(default=256, ge=1)
    worker_block_ms: int = Field(default=200, ge=1)
    worker_coalesce_ms: int = Field(default=50, ge=0)
    worker_batch_size: int = Field(default=16, ge=1)
    worker_concurrency: int = Field(default=2, ge=1)
    worker_max_pending: int = Field(default=4096, ge=1,
                                    description="stream entries one worker holds un-acked; at "
                                    "the bound it reads no more (backpressure)")
    worker_capacity_per_s: float | None = Field(default=None, gt=0)
    worker_skip_after_s: float | None = Field(default=None, gt=0)
    worker_protected_tier: int = Field(default=20, ge=0, le=25)
    worker_claim_idle_ms: int = Field(default=30_000, ge=100)
    worker_max_attempts: int = Field(default=3, ge=1)
    worker_metrics_port: int = Field(default=9103, ge=0, le=65535)
    worker_drain_s: float = Field(default=30.0, ge=0, description="SIGTERM: in-flight "
                                  "inference, writes and acks the worker finishes")
    list_beam_width: int = Field(default=20, ge=1)
    list_size: int = Field(default=20, ge=1)
    advertiser_priors: bool = True
    # Ads the user already converted on are masked in the beam search (per request): a
    # conversion is done business, re-serving the ad wastes a slot.
    exclude_converted: bool = True
    instance_ttl_s: float = Field(default=10.0, gt=0)
    inference_timeout_s: float = Field(default=30.0, gt=0)
    # daily pipeline
    daily_workdir: str = "runs/daily"
    daily_margin: float = Field(default=0.01, ge=0)
    daily_metric: str = "ndcg@8"
    daily_eval_users: int = Field(default=200, ge=1)
    daily_epochs: float = Field(default=1.0, gt=0)
    daily_max_samples_per_task: int = Field(default=700, ge=1)
    # security + limits (issue 6); docs/serving.md#settings lists them
    api_keys: str = Field(default="", repr=False,
                          description="comma-separated mixer API keys; '' = no authentication")
    redis_password: SecretStr | None = Field(default=None, description="AUTH password")
    redis_tls_ca: str | None = Field(default=None, description="CA file for rediss:// URLs")
    redis_cluster: bool = Field(default=False, description="redis_url is a node of a Redis "
                                "Cluster (db 0): clients are RedisCluster")
    redis_cluster_nodes: str = Field(default="", pattern=r"^([^\s,:]+:\d+(,[^\s,:]+:\d+)*)?$",
                                     description="more startup nodes host:port,… (cluster)")
    grpc_tls_cert: str | None = Field(default=None, description="server cert (PEM): TLS on")
    grpc_tls_key: str | None = Field(default=None, description="server key (PEM)")
    grpc_tls_ca: str | None = Field(default=None, description="CA the mixer trusts (user server)")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="HTTP body limit")
    grpc_max_message_bytes: int = Field(default=4_194_304, ge=1024)
    # where models run: inference instances and the daily pipeline (auto: CUDA when torch
    # sees one; several instances with a bare cuda/auto take one GPU each, round-robin)
    device: DeviceSpec = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    # inference service (issue 4): Triton instances, registry polling, catalog tail
    inference_base_port: int = Field(default=8001, ge=1, le=65_000,
                                     description="instance i: gRPC base+3i, HTTP +1, metrics +2")
    inference_advertise_host: str = Field(default="127.0.0.1",
                                          description="host in the URL registered in Redis")
    inference_poll_s: float = Field(default=1.0, gt=0, description="CURRENT poll / stream block")
    inference_heartbeat_s: float = Field(default=2.0, gt=0)
    inference_max_batch: int = Field(default=64, ge=1, description="Triton max_batch_size")
    inference_queue_delay_us: int = Field(default=2000, ge=0, description="dynamic batching delay")
    inference_max_beam: int = Field(default=256, ge=1)
    inference_drain_s: float = Field(default=15.0, ge=0, description="SIGTERM: in-flight drain")
    inference_threads: int | None = Field(default=None, ge=1, description="torch threads/instance")
    inference_startup_s: float = Field(default=300.0, gt=0, description="launcher ready timeout")
    inference_log_dir: str = Field(default="", description="Triton logs; '' = system temp dir")
