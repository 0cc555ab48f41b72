"""hipi_offline.device: the ``--device`` names (auto, cpu, cuda, cuda:N) and their errors."""

from __future__ import annotations

import pytest
import torch

from hipi_offline.device import DEVICES, resolve_device
from hipi_offline.errors import InputError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert DEVICES == ("auto", "cpu", "cuda")


@pytest.mark.parametrize("name", ["gpu", "CPU", "", "cuda0", "mps", "cpu:0"])
def test_unknown_names_are_one_line_naming_the_option(name: str) -> None:
    with pytest.raises(InputError, match=r"^--device: expected auto, cpu or cuda, got ") as err:
        resolve_device(name)
    assert repr(name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_is_the_gpu_or_an_input_error_without_one(name: str) -> None:
    if torch.cuda.is_available():
        assert resolve_device(name) == torch.device(name)
    else:
        with pytest.raises(InputError, match="--device: cuda requested but no CUDA device"):
            resolve_device(name)
