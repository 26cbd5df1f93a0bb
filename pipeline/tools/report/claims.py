"""Claims tested on the runs: each lab question's textbook answer as a claim made of comparisons
(cells), each cell a difference over the seeds with the direction the claim expects, the claim's
cells one family whose p-values are adjusted together (Holm), and a verdict read from them.

A cell's outcome, at the adjusted level LEVEL: *held* when the difference lies on the expected
side of zero, *contradicted* when it lies on the other side, or when every seed gives exactly the
same value on both sides (a claim of a difference, met by none at any seed), and *cannot tell*
otherwise (the runs cannot tell the sides apart at these seeds, or there is one seed a side). A
claim is contradicted when any cell is, held when every cell is, and cannot tell otherwise.

Pairing by seed removes noise the two sides share; where it does not (the median over a claim's
cells of the paired half-width over Welch's is above 1), the claim's cells fall back to Welch.

"Which is best" is a claim of its own (`best`): the configuration with the lowest mean is compared
with every other, all those differences one family, so the choice of the best, made from the same
data, is paid for by the correction; the report then names every configuration the runs cannot
tell from it. Nothing here reads MLflow: the report's sections build the claims, `Numbers` cites them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.core.stats import Interval, difference, holm, p_value
from pipeline.tracking.rows import Configuration

LEVEL = 0.05  # the family-wise error rate of a claim's cells (Holm)
HELD, CONTRADICTED, CANNOT_TELL = "held", "contradicted", "cannot tell"


@dataclass
class Cell:
    """One comparison: `a`'s metric `a_key` minus `b`'s `b_key` over the seeds (paired where they
    share seeds), or minus the fixed value `against`; `expect` is the sign the claim predicts
    (-1: a below b, +1: a above)."""

    label: str
    a: Configuration
    a_key: str
    expect: int
    b: Configuration | None = None
    b_key: str | None = None
    against: float | None = None
    p_adjusted: float = math.nan
    pair: bool = True  # paired by seed where the sides share seeds; the claim turns it off where pairing does not help

    def __post_init__(self) -> None:
        if self.expect not in (-1, 1) or (self.b is None) == (self.against is None):
            raise ValueError("a cell needs expect -1 or +1 and either b or against")

    @property
    def a_values(self) -> dict[int, float]:
        return self.a.values(self.a_key)

    @property
    def b_values(self) -> dict[int, float] | float:
        return self.against if self.b is None else self.b.values(self.b_key or self.a_key)

    @property
    def interval(self) -> Interval:
        return difference(self.a_values, self.b_values, pair=self.pair)

    @property
    def p(self) -> float:
        return p_value(self.a_values, self.b_values, pair=self.pair)

    @property
    def pairing_ratio(self) -> float:
        """The paired interval's half-width over Welch's, NaN where the two sides cannot be paired
        or either has no interval: below 1, pairing removed noise the sides share."""
        if self.b is None:
            return math.nan
        paired = difference(self.a_values, self.b_values)
        welch = difference(self.a_values, self.b_values, pair=False)
        if not (paired.paired and paired.has_interval and welch.has_interval) or welch.half_width == 0:
            return math.nan
        return paired.half_width / welch.half_width

    @property
    def equal_everywhere(self) -> bool:
        """Every seed's difference exactly zero (integer measures: active units, classes)."""
        b = self.b_values
        shared = set(self.a_values) if not isinstance(b, dict) else set(self.a_values) & set(b)
        return len(shared) >= 2 and all(
            self.a_values[s] == (b if not isinstance(b, dict) else b[s]) for s in shared)

    @property
    def outcome(self) -> str:
        if self.equal_everywhere:
            return CONTRADICTED
        if math.isnan(self.p_adjusted) or self.p_adjusted >= LEVEL:
            return CANNOT_TELL
        return HELD if math.copysign(1, self.interval.mean) == self.expect else CONTRADICTED


@dataclass
class Claim:
    """A textbook statement and the cells that test it, one Holm family."""

    family: str  # a short name: the answers table's row and the numbers file's family
    statement: str
    cells: list[Cell] = field(default_factory=list)
    best: str | None = None  # for a "best" claim (`best`): the winner's label

    def __post_init__(self) -> None:
        # Pairing that does not help: where it widens the family's intervals (the median of its
        # cells' paired over Welch half-widths above 1), the family falls back to Welch.
        if not math.isnan(self.pairing) and self.pairing > 1:
            for cell in self.cells:
                cell.pair = False
        for cell, adjusted in zip(self.cells, holm([cell.p for cell in self.cells])):
            cell.p_adjusted = adjusted

    @property
    def pairing(self) -> float:
        """The median over the cells of the paired interval's half-width over Welch's (NaN where
        none can be paired)."""
        ratios = [r for r in (cell.pairing_ratio for cell in self.cells) if not math.isnan(r)]
        return statistics.median(ratios) if ratios else math.nan

    @property
    def paired(self) -> bool:
        return any(cell.pair and not math.isnan(cell.pairing_ratio) for cell in self.cells)

    def where(self, outcome: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.outcome == outcome]

    @property
    def verdict(self) -> str:
        if not self.cells:
            return CANNOT_TELL
        if self.where(CONTRADICTED):
            return CONTRADICTED
        return HELD if len(self.where(HELD)) == len(self.cells) else CANNOT_TELL

    @property
    def seeds(self) -> int:
        """The fewest seeds any cell has on a side: what "at n seeds" means for this claim."""
        counts = [min(len(c.a_values), len(c.b_values) if isinstance(c.b_values, dict) else len(c.a_values))
                  for c in self.cells]
        return min(counts) if counts else 0


def trend(family: str, statement: str, configurations: Sequence[Configuration], key: str, expect: int,
          label, value) -> Claim:
    """A claim that `key` moves in direction `expect` (+1 up, -1 down) at each step along
    `configurations` (ascending): one cell per neighbouring pair, the larger minus the smaller,
    labelled `label(low) → value(high)` ("latent_dim 16 → 32")."""
    cells = [Cell(f"{label(low)} → {value(high)}", high, key, expect, b=low)
             for low, high in zip(configurations, configurations[1:])]
    return Claim(family, statement, cells)


@dataclass
class Best:
    """The configuration with the lowest mean of a metric, tested against every other (one Holm
    family): `tied` are those the runs cannot tell from it."""

    claim: Claim
    best: Configuration

    @property
    def tied(self) -> list[Configuration]:
        return [cell.a for cell in self.claim.cells if cell.outcome != HELD]


def best(family: str, statement: str, configurations: Sequence[Configuration], key: str, label) -> Best:
    """The lowest-mean configuration of `key` and the claim that every other is worse (higher)."""
    winner = min(configurations, key=lambda c: c.interval(key).mean)
    cells = [Cell(f"{label(c)} − {label(winner)}", c, key, +1, b=winner) for c in configurations if c is not winner]
    return Best(Claim(family, statement, cells, best=label(winner)), winner)
