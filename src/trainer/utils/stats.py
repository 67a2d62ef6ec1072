"""Statistics with no heavy imports: the report reads them before any job starts (tqdm, which torch's
stack imports, must not be loaded before the console switches converter progress bars off)."""

from __future__ import annotations

import math


def sign_test(lost: int, gained: int) -> float:
    """One-sided exact sign test: the chance of losing at least `lost` of the `lost + gained` images two
    models disagree on (right before and wrong after, or the reverse) if neither model were better."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if n else 1.0
