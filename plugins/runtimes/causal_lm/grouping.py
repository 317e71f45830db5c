"""Splitting a step's decoding sequences into groups of similar context lengths.

Decode attention gathers each sequence's K/V into one padded batch per group, so a group costs the
slots of its longest member times its size, plus a fixed cost per group (one gather and one attention
call per layer). One group for all pays the longest context for every sequence (about twice the real
slots for lengths spread evenly); one group per sequence pays the fixed cost many times over.
``length_groups`` finds the split with the least total cost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["length_groups"]


def length_groups(lengths: Sequence[int], overhead: float) -> list[tuple[int, int]]:
    """The cheapest split of ascending ``lengths`` into runs ``[start, stop)``.

    A run costs ``(stop - start) * lengths[stop - 1] + overhead`` (padded slots plus the fixed cost of
    a group, in slots). Exact, in linear time: ``best[j] = overhead + j * t + min_i (best[i] - i * t)``
    with ``t = lengths[j - 1]`` is a minimum over lines of decreasing slope queried at growing ``t``,
    so a monotone convex-hull deque answers each query in amortised constant time.
    """
    n = len(lengths)
    best = [0.0] * (n + 1)
    cut = [0] * (n + 1)
    hull: deque[int] = deque([0])  # line i: y = best[i] - i * t

    for j in range(1, n + 1):
        t = float(lengths[j - 1])
        while len(hull) > 1 and best[hull[1]] - hull[1] * t <= best[hull[0]] - hull[0] * t:
            hull.popleft()
        i = hull[0]
        best[j] = overhead + (j - i) * t + best[i]
        cut[j] = i
        # line j makes the last one useless if it overtakes the one before it no later than that one did
        while len(hull) > 1:
            a, b = hull[-2], hull[-1]
            if (best[j] - best[a]) * (b - a) <= (best[b] - best[a]) * (j - a):
                hull.pop()
            else:
                break
        hull.append(j)
    runs: list[tuple[int, int]] = []
    stop = n
    while stop:
        runs.append((cut[stop], stop))
        stop = cut[stop]
    return runs[::-1]
