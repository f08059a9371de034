"""The one device setting (leadre_model/device.py) and the commands that take it."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from leadre.cli import app
from leadre_model.device import bf16_supported, check_device_spec, describe, resolve_device
from leadre_model.errors import UsageError

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_cpu() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert describe(torch.device("cpu")).startswith("cpu (")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu", "", "cpu:0:1"])
def test_unknown_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        check_device_spec(spec)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_says_so(spec: str) -> None:
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device(spec)


def test_bf16_only_where_native() -> None:
    assert not bf16_supported(torch.device("cpu"))


@pytest.mark.parametrize("command", [["train", "--world", "w", "--index", "i", "--out", "o"],
                                     ["eval", "--world", "w"]])
def test_commands_reject_a_bad_device_in_one_line(command: list[str]) -> None:
    res = CliRunner().invoke(app, [*command, "--device", "tpu"])
    assert res.exit_code != 0
    assert "expected auto, cpu, cuda or cuda:N" in res.output
    assert "Traceback" not in res.output
