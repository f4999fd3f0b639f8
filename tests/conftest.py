"""Fixtures shared by test modules that ask for them (none is autouse)."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Taichi's and torch's thread pools fight over 2 cores (a solve can take 100x longer); tests use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
