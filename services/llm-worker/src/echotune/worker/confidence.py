"""Mean and minimum token probability of an answer, accumulated as its tokens stream."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from echotune.common.completion import TokenLogprob
from echotune.common.messages import Confidence


@dataclass(slots=True)
class ConfidenceMeter:
    """Running sums over the tokens that came with a log-probability."""

    tokens: int = 0
    total: float = 0.0
    lowest: float = 1.0

    def add(self, logprobs: Iterable[TokenLogprob]) -> None:
        for token in logprobs:
            probability = min(math.exp(token.logprob), 1.0)  # a rounded logprob may be > 0
            self.tokens += 1
            self.total += probability
            self.lowest = min(self.lowest, probability)

    def merge(self, other: ConfidenceMeter) -> None:
        """Add another attempt's tokens (an answer continued on another provider)."""
        self.tokens += other.tokens
        self.total += other.total
        self.lowest = min(self.lowest, other.lowest)

    def result(self) -> Confidence | None:
        """``None`` when no token had a probability."""
        if not self.tokens:
            return None
        mean = min(self.total / self.tokens, 1.0)
        return Confidence(mean=round(mean, 6), min=round(self.lowest, 6), tokens=self.tokens)
