"""Bit widths per layer under a size and/or latency budget: BRECQ's genetic algorithm, and the
greedy and exact (dynamic programming) baselines on the same problem.

The problem is data: per layer, its bit choices, the sensitivity at each (the loss increase the
layer's quantization alone causes, qcompiler.sim.sensitivity), its packed weight bytes and its
measured kernel latency at each; pair terms (two layers of one block quantized together, minus
both alone) for the interactions inside a block; and the fixed size and latency of everything
else. The objective is the summed sensitivity (with pair terms), minimized subject to
size <= max_size and latency <= max_latency.

Toy example (these run as tests):

>>> p = BitProblem(("a", "b"), ((2, 8), (2, 8)), ((9.0, 0.0), (1.0, 0.0)), ((25, 100), (25, 100)),
...                max_size=130)
>>> genetic_search(p, seed=0).bits
(8, 2)
>>> greedy_search(p).bits, exact_search(p).bits
((8, 2), (8, 2))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np

from qcompiler.errors import UsageError


@dataclasses.dataclass(frozen=True)
class BitProblem:
    """Layers, their bit choices (ascending) and per-choice sensitivity, bytes and latency (ms)."""

    layers: tuple[str, ...]
    choices: tuple[tuple[int, ...], ...]
    sensitivity: tuple[tuple[float, ...], ...]
    size: tuple[tuple[int, ...], ...]
    max_size: int | None = None
    latency: tuple[tuple[float, ...], ...] | None = None
    max_latency: float | None = None
    fixed_size: int = 0          # bytes not assigned here (layers kept in float or pinned elsewhere)
    fixed_latency: float = 0.0   # ms of everything that is not a searched layer's kernel
    #: (layer index i, layer index j) -> matrix [choice of i][choice of j] of the pair's extra loss
    pairs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_size is None and self.max_latency is None:
            raise UsageError("a bit-width search needs a size or a latency budget")
        if self.max_latency is not None and self.latency is None:
            raise UsageError("a latency budget needs measured latencies per layer")

    def index(self, bits: tuple[int, ...]) -> np.ndarray:
        return np.array([c.index(b) for c, b in zip(self.choices, bits)])

    def totals(self, genes: np.ndarray) -> tuple[int, float]:
        size = self.fixed_size + sum(s[g] for s, g in zip(self.size, genes))
        latency = self.fixed_latency + (sum(t[g] for t, g in zip(self.latency, genes)) if self.latency else 0.0)
        return int(size), float(latency)

    def objective(self, genes: np.ndarray) -> float:
        total = sum(s[g] for s, g in zip(self.sensitivity, genes))
        return float(total + sum(m[genes[i]][genes[j]] for (i, j), m in self.pairs.items()))

    def feasible(self, genes: np.ndarray) -> bool:
        size, latency = self.totals(genes)
        return (self.max_size is None or size <= self.max_size) and \
            (self.max_latency is None or latency <= self.max_latency + 1e-12)

    def excess(self, genes: np.ndarray) -> float:
        """How far over the budgets, each as a fraction of its budget (0: feasible)."""
        size, latency = self.totals(genes)
        over = 0.0
        if self.max_size is not None:
            over += max(size - self.max_size, 0) / self.max_size
        if self.max_latency is not None:
            over += max(latency - self.max_latency, 0.0) / self.max_latency
        return over

    def check_reachable(self) -> None:
        """UsageError naming the smallest size or latency reachable when no assignment meets the budget."""
        lowest_size = self.fixed_size + sum(min(s) for s in self.size)
        if self.max_size is not None and lowest_size > self.max_size:
            raise UsageError(f"no bit assignment fits {format_budget_bytes(self.max_size)}: the smallest "
                             f"reachable is {format_budget_bytes(lowest_size)} (every layer at its fewest bits)")
        if self.max_latency is not None:
            lowest = self.fixed_latency + sum(min(t) for t in self.latency)
            if lowest > self.max_latency:
                raise UsageError(f"no bit assignment runs within {self.max_latency:.3f} ms: the fastest "
                                 f"reachable is {lowest:.3f} ms (each layer at its fastest bit width)")


def format_budget_bytes(count: int) -> str:
    return f"{count:,} bytes ({count / 1024:.1f} KiB)"


@dataclasses.dataclass
class Assignment:
    """A search's answer: bits per layer, what it costs, and what the search saw on the way."""

    method: str
    bits: tuple[int, ...]
    objective: float
    size: int
    latency: float
    seconds: float
    evaluated: int = 0
    #: per generation (GA): (best objective, its size, its latency)
    history: list = dataclasses.field(default_factory=list)
    #: non-dominated (size, latency, objective, bits) of every feasible individual seen
    front: list = dataclasses.field(default_factory=list)

    def by_layer(self, problem: BitProblem) -> dict[str, int]:
        return dict(zip(problem.layers, self.bits))


def _answer(problem: BitProblem, method: str, genes: np.ndarray, start: float, **extra) -> Assignment:
    size, latency = problem.totals(genes)
    bits = tuple(int(c[g]) for c, g in zip(problem.choices, genes))
    return Assignment(method, bits, problem.objective(genes), size, latency, time.perf_counter() - start, **extra)


def _cost_rate(problem: BitProblem, genes: np.ndarray, layer: int, new: int) -> float:
    """Objective increase per unit of budget saved by moving `layer` to choice `new` (lower)."""
    saved = 0.0
    old = genes[layer]
    if problem.max_size is not None:
        saved += (problem.size[layer][old] - problem.size[layer][new]) / problem.max_size
    if problem.max_latency is not None:
        saved += (problem.latency[layer][old] - problem.latency[layer][new]) / problem.max_latency
    if saved <= 0:
        return math.inf
    moved = genes.copy()
    moved[layer] = new
    return (problem.objective(moved) - problem.objective(genes)) / saved


def _lower_until_feasible(problem: BitProblem, genes: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Lower one layer a step at a time, the cheapest objective increase per budget saved first
    (with `rng`: one of the three cheapest), until the assignment is within budget."""
    genes = genes.copy()
    while not problem.feasible(genes):
        moves = sorted((_cost_rate(problem, genes, i, genes[i] - 1), i) for i in range(len(genes)) if genes[i] > 0)
        moves = [m for m in moves if math.isfinite(m[0])]
        if not moves:  # only layers whose fewer bits save nothing are left: go all the way down
            return np.zeros_like(genes)
        pick = moves[int(rng.integers(min(3, len(moves))))] if rng is not None else moves[0]
        genes[pick[1]] -= 1
    return genes


def greedy_search(problem: BitProblem) -> Assignment:
    """Every layer at its most bits, then the cheapest step down (objective per budget saved)
    until within budget: the greedy baseline (AIMET's is of this kind)."""
    start = time.perf_counter()
    problem.check_reachable()
    top = np.array([len(c) - 1 for c in problem.choices])
    return _answer(problem, "greedy", _lower_until_feasible(problem, top, None), start)


def exact_search(problem: BitProblem, resolution: int = 2_000_000) -> Assignment:
    """The optimum of the separable objective (pair terms left out of the search, included in the
    reported objective) under one budget, by dynamic programming over the budget (a multiple-choice
    knapsack). Costs are rounded up to units of budget / `resolution` (sizes: exact while the
    budget in bytes is under `resolution`), so the answer always fits."""
    start = time.perf_counter()
    problem.check_reachable()
    if problem.max_size is not None and problem.max_latency is not None:
        raise UsageError("the exact baseline takes one budget (size or latency), not both")
    if problem.max_size is not None:
        costs, budget, fixed = problem.size, problem.max_size, problem.fixed_size
    else:
        costs, budget, fixed = problem.latency, problem.max_latency, problem.fixed_latency
    unit = max(1.0, budget / resolution) if problem.max_size is not None else budget / resolution
    capacity = int(math.floor((budget - fixed) / unit + 1e-9))
    best = np.zeros(capacity + 1)          # best[c]: least objective of the layers so far within c units
    picks = []
    for layer, options in enumerate(costs):
        new = np.full(capacity + 1, np.inf)
        choice = np.zeros(capacity + 1, np.int8)
        for g, cost in enumerate(options):
            units = int(math.ceil(cost / unit - 1e-9))
            if units > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[units:] = best[:capacity + 1 - units] + problem.sensitivity[layer][g]
            better = candidate < new
            new[better], choice[better] = candidate[better], g
        best = new
        picks.append(choice)
    genes, c = np.zeros(len(costs), int), int(np.argmin(best))
    for layer in range(len(costs) - 1, -1, -1):
        genes[layer] = picks[layer][c]
        c -= int(math.ceil(costs[layer][genes[layer]] / unit - 1e-9))
    return _answer(problem, "exact (dynamic programming)", genes, start)


@dataclasses.dataclass(frozen=True)
class GeneticConfig:
    """BRECQ's genetic algorithm: a population of assignments within budget, tournament
    selection, uniform crossover, per-gene mutation, the best `elite` kept each generation."""

    population: int = 50
    generations: int = 100
    crossover: float = 0.9
    mutation: float | None = None   # per gene; None: 1 / number of layers
    elite: int = 2
    tournament: int = 3
    patience: int = 30              # stop after this many generations without a better best


def genetic_search(problem: BitProblem, seed: int = 0, config: GeneticConfig | None = None,
                   progress=None) -> Assignment:
    """The GA. Every individual is made feasible (repaired by lowering bits) before it is scored,
    so every generation's best is within budget. The greedy answer is one of the first
    population's individuals. `progress(generation, best)` is called after each generation."""
    start, config = time.perf_counter(), config or GeneticConfig()
    problem.check_reachable()
    rng = np.random.default_rng(seed)
    n = len(problem.layers)
    mutation = config.mutation if config.mutation is not None else 1.0 / max(n, 1)
    seen: dict[tuple, float] = {}

    def score(genes: np.ndarray) -> float:
        key = tuple(int(g) for g in genes)
        if key not in seen:
            seen[key] = problem.objective(genes)
        return seen[key]

    top = np.array([len(c) - 1 for c in problem.choices])
    population = [_lower_until_feasible(problem, top, None)]
    while len(population) < config.population:
        population.append(_lower_until_feasible(problem, np.array([rng.integers(len(c)) for c in problem.choices]), rng))
    history, best, stale = [], None, 0
    for generation in range(config.generations):
        ranked = sorted(population, key=score)
        if best is None or score(ranked[0]) < score(best) - 1e-15:
            best, stale = ranked[0], 0
        else:
            stale += 1
        history.append((score(best), *problem.totals(best)))
        if progress is not None:
            progress(generation, history[-1])
        if stale >= config.patience:
            break
        children = [g.copy() for g in ranked[:config.elite]]
        while len(children) < config.population:
            a, b = (_tournament(population, score, config.tournament, rng) for _ in range(2))
            child = np.where(rng.random(n) < 0.5, a, b) if rng.random() < config.crossover else a.copy()
            for i in np.nonzero(rng.random(n) < mutation)[0]:
                if len(problem.choices[i]) > 1:
                    child[i] = (child[i] + rng.integers(1, len(problem.choices[i]))) % len(problem.choices[i])
            children.append(_lower_until_feasible(problem, child, rng))
        population = children
    front = pareto_front(problem, seen)
    return _answer(problem, "genetic", best, start, evaluated=len(seen), history=history, front=front)


def _tournament(population: list, score, size: int, rng: np.random.Generator) -> np.ndarray:
    entrants = [population[int(i)] for i in rng.integers(len(population), size=size)]
    return min(entrants, key=score)


def pareto_front(problem: BitProblem, seen: dict[tuple, float]) -> list[tuple]:
    """(size, latency, objective, bits) of the seen assignments no other beats on all three."""
    points = sorted((*problem.totals(np.array(k)), v, tuple(int(c[g]) for c, g in zip(problem.choices, k)))
                    for k, v in seen.items())
    front: list[tuple] = []
    for point in points:   # sorted by size: only an earlier (front) point can dominate this one
        if not any(o[1] <= point[1] + 1e-12 and o[2] <= point[2] for o in front):
            front.append(point)
    return front


def brute_force(problem: BitProblem) -> Assignment:
    """Every assignment tried (small problems only): the reference the tests check the GA against."""
    start = time.perf_counter()
    best = None
    for genes in itertools.product(*(range(len(c)) for c in problem.choices)):
        genes = np.array(genes)
        if problem.feasible(genes) and (best is None or problem.objective(genes) < problem.objective(best)):
            best = genes
    if best is None:
        problem.check_reachable()
    return _answer(problem, "brute force", best, start)
