"""Seeds are 32-bit, as in EDM's generate.py: sample ``i`` of a run draws from seed ``seed_base + i``.

A seed outside ``[0, 2**32)`` would be reduced onto another seed and repeat its sample, so a range of
seeds that passes the limit is refused (a search's seeds and its held-out seeds must stay disjoint).
"""

from __future__ import annotations

from skiptune.errors import SkiptuneError

SEED_LIMIT = 1 << 32


def check_seed_range(first: int, count: int, what: str, flag: str) -> None:
    """Refuse the seeds ``first .. first + count - 1`` unless all lie in ``[0, 2**32)``; ``what`` and
    ``flag`` name the value and the option that sets it."""
    if first < 0 or first + count > SEED_LIMIT:
        seeds = f"its {count} seeds must lie in 0..{SEED_LIMIT - 1}" if count > 1 else "seeds are 32-bit"
        raise SkiptuneError(f"bad {what} {first} ({flag}): {seeds}; expected 0..{SEED_LIMIT - count}")
