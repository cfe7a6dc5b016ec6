"""IB's historical-data pacing rules as a sans-I/O policy: how long a request must wait to keep them.

IB refuses (error 162, "pacing violation") a request for bars of 30 s or less that would make
(a) two identical requests within 15 s, (b) six or more requests for the same contract, exchange and
tick type within 2 s, or (c) more than 60 requests in any 10 minutes. Longer bars have no published
limit, but TWS still throttles, so they keep a polite minimum gap. The caller asks :meth:`Pacer.delay`
with the wall time, sleeps that long, asks again, and :meth:`Pacer.record` s the request when it goes.
"""

from __future__ import annotations

from collections import deque


class Pacer:
    """Keeps the history requests of one TWS session inside IB's pacing rules (see the module docstring).

    ``max_per_10min`` and ``max_per_contract_2s`` leave headroom under IB's 60 and 5 by default, for
    other programs on the same account. ``min_gap_s`` spaces requests of longer bars.
    """

    def __init__(self, max_per_10min: int = 55, max_per_contract_2s: int = 4, min_gap_s: float = 0.05) -> None:
        self.max_per_10min = max_per_10min
        self.max_per_contract_2s = max_per_contract_2s
        self.min_gap_s = min_gap_s
        self._full = (max_per_10min, max_per_contract_2s, min_gap_s)
        self._small: deque[tuple[float, str, str]] = deque()  # (time s, request key, contract key)
        self._last = -1e18
        self.waits = 0

    def share(self, fraction: float) -> None:
        """Keep to ``fraction`` of the pace it was made with from now on (this process's part of a
        TWS session it shares with others): fewer requests per window, wider gaps."""
        if not 0 < fraction <= 1:
            raise ValueError("a share is a fraction in (0, 1]")
        per_10min, per_contract, gap = self._full
        self.max_per_10min = max(1, int(per_10min * fraction))
        self.max_per_contract_2s = max(1, int(per_contract * fraction))
        self.min_gap_s = gap / fraction

    def delay(self, now_s: float, request_key: str, contract_key: str, small: bool) -> float:
        """Seconds to wait before sending the request (0: now)."""
        wait = self._last + self.min_gap_s - now_s
        if small:
            q = self._small
            while q and now_s - q[0][0] >= 600.0:
                q.popleft()
            for t, k, _ in q:
                if k == request_key:
                    wait = max(wait, t + 15.0 - now_s)
            same = [t for t, _, c in q if c == contract_key and now_s - t < 2.0]
            if len(same) >= self.max_per_contract_2s:
                wait = max(wait, same[-self.max_per_contract_2s] + 2.0 - now_s)
            if len(q) >= self.max_per_10min:
                wait = max(wait, q[len(q) - self.max_per_10min][0] + 600.0 - now_s)
        return max(0.0, wait)

    def record(self, now_s: float, request_key: str, contract_key: str, small: bool) -> None:
        """The request goes now."""
        self._last = now_s
        if small:
            self._small.append((now_s, request_key, contract_key))
