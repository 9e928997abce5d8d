"""Shared fixtures: tiny offline models built at test time."""
import pytest
import torch

from vtr.testing import example_inputs, tiny_model

torch.set_num_threads(2)


@pytest.fixture
def llava():
    """A fresh tiny LLaVA-1.5 (random init, 576 visual tokens per image) and its processor."""
    return tiny_model("llava")


@pytest.fixture
def inputs2(llava):
    """Two left-padded rows with different images and prompt lengths."""
    return example_inputs(llava[1], "llava", batch=2, seed=1)
