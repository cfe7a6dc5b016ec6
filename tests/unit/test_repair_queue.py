"""The repair queue keeps queue order and finds a series' waiting repairs without a scan."""

from deltafeed.engine.completeness import Repair, RepairQueue


def job(key: str, tf: str, first: int, last: int | None = None) -> Repair:
    return Repair(key, tf, first, first if last is None else last, found=0.0)


def test_first_in_first_out_across_series() -> None:
    q = RepairQueue()
    jobs = [job("a", "1m", 0), job("b", "1m", 0), job("a", "5m", 0), job("a", "1m", 120_000)]
    for j in jobs:
        q.append(j)
    assert len(q) == 4 and list(q) == jobs
    assert [q.popleft() for _ in range(4)] == jobs
    assert len(q) == 0 and q.of("a", "1m") == []


def test_of_lists_only_the_series_waiting_repairs_in_order() -> None:
    q = RepairQueue([job("a", "1m", 0), job("a", "5m", 0), job("a", "1m", 60_000), job("b", "1m", 0)])
    assert [j.first for j in q.of("a", "1m")] == [0, 60_000]
    assert [j.key for j in q.of("b", "1m")] == ["b"]
    q.popleft()
    assert [j.first for j in q.of("a", "1m")] == [60_000]


def test_thousands_of_series_each_find_their_own() -> None:
    q = RepairQueue(job(f"s{i}", tf, 0) for i in range(2000) for tf in ("1m", "5m"))
    assert len(q) == 4000
    assert all(len(q.of(f"s{i}", "5m")) == 1 for i in range(2000))
