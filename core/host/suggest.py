"""Did-you-mean suggestions for misspelt names, and foreign exceptions on one line.

Closeness is the optimal string alignment distance (Damerau–Levenshtein restricted to
non-overlapping edits): insertions, deletions, substitutions and transpositions of two
adjacent characters each count as one edit, so ``ddmi`` is one edit from ``ddim`` and two
from ``ddpm``. Case is ignored. Neither the standard library (``difflib`` ranks by
matching blocks, which puts ``ddpm`` first) nor the project's dependencies provide it.
"""

from __future__ import annotations

from collections.abc import Iterable


def edit_distance(a: str, b: str) -> int:
    """The optimal string alignment distance between ``a`` and ``b`` (case-sensitive)."""
    # Rows of the dynamic-programming table: two back for transpositions, one back, current.
    before = previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(
                previous[j] + 1,  # delete ca
                current[j - 1] + 1,  # insert cb
                previous[j - 1] + (ca != cb),  # substitute
            )
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb and ca != cb:
                current[j] = min(current[j], before[j - 2] + 1)  # transpose
        before, previous = previous, current
    return previous[-1]


def max_edits(word: str) -> int:
    """How many edits a suggestion for ``word`` may be away: one per three characters."""
    return max(1, len(word) // 3)


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate fewest edits from ``word`` (ties: the first given), or None when none
    is within :func:`max_edits` edits or every candidate would be a complete rewrite."""
    best: tuple[int, str] | None = None
    limit = max_edits(word)
    for candidate in candidates:
        distance = edit_distance(word.lower(), candidate.lower())
        if distance > limit or distance >= max(len(word), len(candidate)):
            continue
        if best is None or distance < best[0]:
            best = (distance, candidate)
    return best[1] if best is not None else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, else ``""``."""
    match = closest(word, candidates)
    return f" (did you mean {match!r}?)" if match else ""


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of a foreign exception on one line (whitespace collapsed, cut to
    ``limit`` characters), for error lines that quote it."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
