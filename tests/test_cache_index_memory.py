"""The cache index at 10 million entries stays within 128 bytes of the cache manager's memory per cached
blob (issue 20). Slow (about 2 minutes a policy here): run with `pytest -m slow tests/test_cache_index_memory.py`.
The figures themselves, and the restart times, are reported by `scripts/bench cache --index-entries ...`."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench.d"))
import cache_index  # noqa: E402  (the bench's measurement, run in fresh processes)

ENTRIES = 10_000_000
BOUND = 128  # bytes of resident memory per cached blob (nginx's keys zone: ~125)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("policy", cache_index.POLICIES)
def test_ten_million_entries_fit_in_128_bytes_each(policy):
    (row,) = cache_index.measure(ENTRIES, (policy,))
    assert row["bytes_per_entry"] <= BOUND, row
    assert row["crash_detected"] is True, row  # the start after a crash saw the journal (and asks for a scan)
