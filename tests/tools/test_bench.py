"""`make bench` helpers."""
from __future__ import annotations

import pytest

from tools.bench import worker_counts


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])])
def test_worker_counts_double_up_to_the_cores(cores, counts):
    assert worker_counts(cores) == counts
