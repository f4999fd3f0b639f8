"""precond.estimate_memory against the measured peak of a real set-up plus solve."""
import os

import pytest

from precond import METHODS, estimate_memory
from precond.memory_probe import measure_memory

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("method", METHODS)
def test_estimate_holds_the_measured_peak_within_2x(method):
    measured = measure_memory(method, 512, 512)
    estimate = estimate_memory(method, 512, 512)
    assert measured <= estimate <= 2 * measured, (measured, estimate)


def test_estimate_covers_every_method_and_grows_with_the_grid():
    assert all(estimate_memory(m, 64, 64) < estimate_memory(m, 512, 512) for m in METHODS)


@pytest.mark.parametrize("args, message", [
    (("cg2", 8, 8), "unknown solver 'cg2'"),
    (("mgpcg", 0, 8), "nx must be an integer >= 1"),
    (("mgpcg", 8, 2.5), "ny must be an integer >= 1"),
])
def test_estimate_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(*args)
