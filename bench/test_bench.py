"""pytest-benchmark over the same registry: `pytest bench/ --benchmark-only` (needs a CUDA device)."""

import pytest
import torch

from bench.cases import CASES, PROVIDERS
from bench.run import graph_replay

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA device")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case, mode", [(c, m) for c in CASES for m in c.modes], ids=lambda x: getattr(x, "name", x))
def test_bench(benchmark, case, mode, provider):
    bench = case.build(provider, mode)
    if bench is None:
        pytest.skip(f"{provider} cannot run {case.name} {mode} here")

    fn = graph_replay(bench.fn) if bench.graph else bench.fn  # replayed, as bench.run times it

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark(run)
