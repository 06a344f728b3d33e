import os

import pytest

# Triton must see TRITON_INTERPRET before it is imported: without a GPU its kernels run in the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def poisoned_allocations():
    """torch's deterministic mode fills every fresh allocation with NaN (floats) or the largest integer (ints),
    so an output row a kernel never writes shows up."""
    import torch

    old_mode = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_mode)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill
