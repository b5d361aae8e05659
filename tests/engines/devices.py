"""The devices that the torch paths of the engines are tested on: the CPU, and CUDA where there is one."""

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason="no CUDA device here: the GPU path runs the same test on the device machine",
        ),
    ),
]
