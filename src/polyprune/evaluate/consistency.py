"""RankC cross-lingual consistency (Qi/Jiang et al. 2023, as defined in Kim et al. 2024, App. E).

Candidates of each example are ranked by *descending* probability in both languages;
``consist = Σ_j w_j · P@j`` with ``P@j = |top-j(l) ∩ top-j(l')| / j`` and
``w = softmax([N-1, …, 0])`` (= softmax([N, …, 1])). RankC is the mean over parallel examples.
(Kim et al.'s code ranks ascending — the wrong direction; here the best candidate is first.)
"""
from __future__ import annotations

import math
from typing import Sequence


def rank_weights(n: int) -> list[float]:
    z = [math.exp(n - j) for j in range(1, n + 1)]
    s = sum(z)
    return [x / s for x in z]


def ranking(scores: Sequence[float]) -> list[int]:
    """Candidate indices by descending score (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))


def consist(rank_a: Sequence[int], rank_b: Sequence[int]) -> float:
    """Weighted precision@j overlap of two rankings of the same candidates."""
    if sorted(rank_a) != sorted(rank_b):
        raise ValueError("rankings must order the same candidates")
    w = rank_weights(len(rank_a))
    return sum(w[j - 1] * len(set(rank_a[:j]) & set(rank_b[:j])) / j for j in range(1, len(rank_a) + 1))


def rankc(scores_a: Sequence[Sequence[float]], scores_b: Sequence[Sequence[float]]) -> tuple[float, list[float]]:
    """RankC between two languages from per-example candidate scores (log-probs or probs):
    ``(mean, per-example consist)``."""
    if len(scores_a) != len(scores_b):
        raise ValueError("RankC needs the same (parallel) examples in both languages")
    per = [consist(ranking(a), ranking(b)) for a, b in zip(scores_a, scores_b)]
    return (sum(per) / len(per) if per else float("nan")), per
