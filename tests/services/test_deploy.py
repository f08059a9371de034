"""The Kubernetes manifests render (kustomize, through kubectl when present), and the GPU
overlay puts exactly the inference pods and the daily job on one GPU each, in the CUDA image."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")


def _render(overlay: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / "deploy" / overlay)], check=True,  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _pod_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return (spec["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else spec)["template"]["spec"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_gpu_overlay_puts_inference_and_daily_on_a_gpu() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for d in _render("k8s")}
    gpu = {(d["kind"], d["metadata"]["name"]): d for d in _render("k8s-gpu")}
    assert base.keys() == gpu.keys()
    on_gpu = set()
    for key, doc in gpu.items():
        if doc["kind"] not in ("Deployment", "StatefulSet", "CronJob", "Job"):
            continue
        (c,) = _pod_spec(doc)["containers"][:1]
        if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 1:
            on_gpu.add(key[1])
            assert c["image"] == "leadre:gpu"
            assert {"name": "LEADRE_DEVICE", "value": "cuda"} in c["env"]
            # the base requests are kept
            assert c["resources"]["requests"] == _pod_spec(base[key])["containers"][0]["resources"]["requests"]
        else:
            assert c["image"] == _pod_spec(base[key])["containers"][0]["image"]
    assert on_gpu == {"inference", "leadre-daily"}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_100m_overlay_has_the_capacity_pages_sizes() -> None:
    """deploy/k8s-100m renders with the sizes docs/capacity.md derives, one behaviour
    partition per Redis master, and the init job joining every Redis pod."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _render("k8s-100m")}
    replicas = {name: docs[(kind, name)]["spec"]["replicas"] for kind, name in docs
                if kind in ("Deployment", "StatefulSet")}
    assert replicas == {"redis-cluster": 18, "mixer": 180, "user-server": 18, "worker": 489,
                        "inference": 454}
    page = (ROOT / "docs" / "capacity.md").read_text()
    for n in ("180 replicas", "18 replicas", "489 worker pods", "454 pods", "9 masters + 9 replicas"):
        assert n in page, n
    settings = docs[("ConfigMap", "leadre-settings")]["data"]
    assert int(settings["LEADRE_BEHAVIOR_PARTITIONS"]) == replicas["redis-cluster"] // 2
    assert settings["LEADRE_DURABLE_REPLICAS"] == "1"
    init = _pod_spec(docs[("Job", "redis-cluster-init")])["containers"][0]["args"][0]
    assert f"seq 0 {replicas['redis-cluster'] - 1}" in init
