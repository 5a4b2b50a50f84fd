"""Bit widths per layer under a size and/or latency budget: BRECQ's genetic algorithm, and the
greedy and exact (integer programming) baselines on the same problem.

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
import functools
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

    @functools.cached_property
    def _pairs_of(self) -> dict[int, list]:
        """Each layer's pair terms as (the other layer, the matrix read from this layer's side)."""
        by_layer: dict[int, list] = {}
        for (i, j), m in self.pairs.items():
            matrix = np.asarray(m, float)
            by_layer.setdefault(i, []).append((j, matrix))
            by_layer.setdefault(j, []).append((i, matrix.T))
        return by_layer

    def change(self, genes: np.ndarray, layer: int, new: int) -> float:
        """How much the objective moves when `layer` alone goes to choice `new`: its own term
        and its pair terms only (the search's inner loop; objective() sums every layer)."""
        old = genes[layer]
        delta = self.sensitivity[layer][new] - self.sensitivity[layer][old]
        for other, matrix in self._pairs_of.get(layer, ()):
            delta += matrix[new, genes[other]] - matrix[old, genes[other]]
        return float(delta)

    def feasible(self, genes: np.ndarray) -> bool:
        return self.within(*self.totals(genes))

    def within(self, size: int, latency: float) -> bool:
        return (self.max_size is None or size <= self.max_size) and \
            (self.max_latency is None or latency <= self.max_latency + 1e-12)

    def moved_totals(self, genes: np.ndarray, layer: int, new: int, totals: tuple[int, float]) -> tuple[int, float]:
        """totals() after `layer` alone goes to choice `new`, from the current `totals`."""
        size, latency = totals
        size += self.size[layer][new] - self.size[layer][genes[layer]]
        if self.latency:
            latency += self.latency[layer][new] - self.latency[layer][genes[layer]]
        return size, latency

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
        if self.max_size is not None and self.max_latency is not None:
            smallest = smallest_size_within_latency(self)
            if smallest > self.max_size:   # each budget alone can be met, not both (fewer bits can be slower)
                raise UsageError(f"no bit assignment fits {format_budget_bytes(self.max_size)} and runs within "
                                 f"{self.max_latency:.3f} ms: within that time the smallest reachable is "
                                 f"{format_budget_bytes(smallest)}")


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


def _violations(problem: BitProblem, totals: tuple[int, float]) -> tuple[float, float]:
    """How far (size, latency) are over their budgets, each as a fraction of its budget (0 within)."""
    size, latency = totals
    over_size = max(0.0, (size - problem.max_size) / problem.max_size) if problem.max_size is not None else 0.0
    over_time = max(0.0, (latency - problem.max_latency) / problem.max_latency) \
        if problem.max_latency is not None else 0.0
    return over_size, over_time


def _cost_rate(problem: BitProblem, genes: np.ndarray, layer: int, new: int, totals: tuple[int, float],
               before: tuple[float, float]) -> float:
    """Objective increase per unit of budget saved by moving `layer` to choice `new`: savings
    count on the budgets now exceeded (`before`: _violations of `totals`), and a budget now met
    counts what the move would put it over (fewer bits can run slower: a step that saves bytes
    may cost time). inf: saves nothing."""
    after = _violations(problem, problem.moved_totals(genes, layer, new, totals))
    saved = 0.0
    if problem.max_size is not None:
        old_size, new_size = problem.size[layer][genes[layer]], problem.size[layer][new]
        saved += (old_size - new_size) / problem.max_size if before[0] > 0 else -after[0]
    if problem.max_latency is not None:
        old_time, new_time = problem.latency[layer][genes[layer]], problem.latency[layer][new]
        saved += (old_time - new_time) / problem.max_latency if before[1] > 0 else -after[1]
    if saved <= 0:
        return math.inf
    return problem.change(genes, layer, new) / saved


def _lower_until_feasible(problem: BitProblem, genes: np.ndarray, rng: np.random.Generator | None,
                          pinned: int | None = None, finish: bool = False) -> np.ndarray | None:
    """Lower one layer a step at a time, the cheapest objective increase per budget saved first
    (with `rng`: one of the three cheapest), until the assignment is within budget. The `pinned`
    layer is never moved. Where no step down saves budget (fewer bits can run slower), the rest
    is _repair_by_any_move's; None if that too finds no way into the budget.

    With `finish`, each step also notes the cheapest single step that would end the repair
    there; each of those endings and the walk's own end spends what the budget has left
    (_raise_while_feasible), and the best is returned: the cheapest rate often belongs to a
    large layer whose last step saves far more than was missing (on the ImageNet MobileNetV2,
    4 -> 2 bits on a 200 KB layer to cover the last few KB)."""
    genes, endings = genes.copy(), []
    while not problem.feasible(genes):
        totals = problem.totals(genes)
        over = _violations(problem, totals)
        moves = sorted((_cost_rate(problem, genes, i, genes[i] - 1, totals, over), i) for i in range(len(genes))
                       if genes[i] > 0 and i != pinned)
        moves = [m for m in moves if math.isfinite(m[0])]
        if not moves:
            genes = _repair_by_any_move(problem, genes, pinned)
            break
        if finish:
            ends = [(problem.change(genes, i, genes[i] - 1), i) for _, i in moves
                    if problem.within(*problem.moved_totals(genes, i, genes[i] - 1, totals))]
            if ends:
                ending = genes.copy()
                ending[min(ends)[1]] -= 1
                endings.append(ending)
        pick = moves[int(rng.integers(min(3, len(moves))))] if rng is not None else moves[0]
        genes[pick[1]] -= 1
    candidates = endings + ([genes] if genes is not None else [])
    if not finish or not candidates:
        return genes
    return min((_raise_while_feasible(problem, g) for g in candidates), key=problem.objective)


def _repair_by_any_move(problem: BitProblem, genes: np.ndarray, pinned: int | None) -> np.ndarray | None:
    """Into the budget by moving one layer at a time to any choice, up or down, each move the one
    that cuts the overshoot (summed over the budgets, as fractions) the most per objective
    increase; every move cuts it, so this ends. None where no move does (two budgets pulling
    apart: a layer's fewer bits save bytes and cost time)."""
    genes = genes.copy()
    while not problem.feasible(genes):
        totals = problem.totals(genes)
        over = sum(_violations(problem, totals))
        moves = []
        for i in range(len(genes)):
            for c in range(len(problem.choices[i])):
                if i == pinned or c == genes[i]:
                    continue
                cut = over - sum(_violations(problem, problem.moved_totals(genes, i, c, totals)))
                if cut > 1e-12:
                    moves.append((problem.change(genes, i, c) / cut, i, c))
        if not moves:
            return None
        _, layer, choice = min(moves)
        genes[layer] = choice
    return genes


def _raise_while_feasible(problem: BitProblem, genes: np.ndarray) -> np.ndarray:
    """Spend what the budget has left: raise the layer whose step up lowers the objective most
    and still fits, until none does (a repair that overshot leaves room)."""
    genes = genes.copy()
    while True:
        totals = problem.totals(genes)
        gains = [(problem.change(genes, i, c), i, c) for i in range(len(genes))
                 for c in range(genes[i] + 1, len(problem.choices[i]))
                 if problem.within(*problem.moved_totals(genes, i, c, totals))]
        best = min(gains, default=None)
        if best is None or best[0] >= -1e-15:
            return genes
        genes[best[1]] = best[2]


def greedy_search(problem: BitProblem) -> Assignment:
    """Every layer at its most bits, then the cheapest step down (objective per budget saved)
    until within budget: the greedy baseline (AIMET's is of this kind). Where its steps find no
    way into two budgets that pull apart, its answer is the fewest bytes within the latency
    budget (the integer program's), and its method says so."""
    start = time.perf_counter()
    problem.check_reachable()
    top = np.array([len(c) - 1 for c in problem.choices])
    found = _lower_until_feasible(problem, top, None)
    if found is None:
        return _answer(problem, "greedy (stuck: the fewest bytes within the latency budget)",
                       _smallest_within_latency(problem), start)
    return _answer(problem, "greedy", found, start)


def exact_search(problem: BitProblem) -> Assignment:
    """The optimum of the whole objective, pair terms included, under the size and/or latency
    budget: a mixed-integer linear program solved by HiGHS (scipy.optimize.milp).

    One binary x[l, g] per layer and choice (exactly one choice per layer); one variable y in
    [0, 1] per pair term and pair of choices, tied to the two layers' choices by its row and
    column sums (sum_b y[a, b] = x[i, a], sum_a y[a, b] = x[j, b]), which makes y the product
    x[i, a] * x[j, b] at every integer point. The budgets are linear in x."""
    start = time.perf_counter()
    problem.check_reachable()
    # check_reachable passed, so only the solver can fail to answer
    found, offsets = _integer_program(problem, problem.sensitivity, "the exact bit-width search")
    genes = _chosen(found, offsets)
    if not problem.feasible(genes):   # the solver's tolerance let a budget slip by a hair
        genes = _lower_until_feasible(problem, genes, None)
        if genes is None:
            raise RuntimeError("the exact bit-width search's answer is over budget and could not be repaired")
    return _answer(problem, "exact (integer program)", genes, start)


def smallest_size_within_latency(problem: BitProblem) -> int:
    """The fewest bytes of any assignment within the latency budget (an integer program over the
    sizes alone): where fewer bits run slower (4- and 2-bit weights unpacked into 8-bit kernels),
    a size budget and a latency budget that can each be met may not be met together. The latency
    budget alone must be reachable (check_reachable tests it first)."""
    return int(problem.totals(_smallest_within_latency(problem))[0])


def _smallest_within_latency(problem: BitProblem) -> np.ndarray:
    """The assignment (choice per layer) of smallest_size_within_latency."""
    timed = dataclasses.replace(problem, max_size=None, pairs={})
    found, offsets = _integer_program(timed, problem.size, "the smallest size within the latency budget")
    return _chosen(found, offsets)


def _chosen(found, offsets: np.ndarray) -> np.ndarray:
    """Each layer's choice in an integer program's solution (its largest 0/1 variable)."""
    return np.array([int(np.argmax(found.x[start:end])) for start, end in zip(offsets[:-1], offsets[1:])])


def _integer_program(problem: BitProblem, choice_costs, what: str):
    """HiGHS (scipy.optimize.milp) minimizing `choice_costs` (per layer, per choice) plus the
    problem's pair terms under its budgets: (the solution, each layer's first variable). A
    RuntimeError naming `what` where the solver finds no answer."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    offsets = np.cumsum([0, *(len(c) for c in problem.choices)])
    count = int(offsets[-1])
    pair_offsets, cost = {}, [float(v) for row in choice_costs for v in row]
    for (i, j), matrix in problem.pairs.items():
        pair_offsets[i, j] = len(cost)   # the x variables come first in `cost`
        cost += [float(v) for row in matrix for v in row]
    rows, lower, upper = _exact_constraints(problem, offsets, pair_offsets, len(cost))
    integrality = np.r_[np.ones(count), np.zeros(len(cost) - count)]
    found = milp(np.asarray(cost), constraints=LinearConstraint(np.array(rows), lower, upper),
                 integrality=integrality, bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    if found.x is None:
        raise RuntimeError(f"{what} found no answer: {found.message}")
    return found, offsets


def _exact_constraints(problem: BitProblem, offsets: np.ndarray, pair_offsets: dict, width: int):
    """The integer program's rows: one choice per layer, the pair products' marginals, the budgets."""
    rows, lower, upper = [], [], []

    def row(entries: dict, low: float, high: float) -> None:
        r = np.zeros(width)
        for k, v in entries.items():
            r[k] = v
        rows.append(r), lower.append(low), upper.append(high)

    for l in range(len(problem.choices)):
        row({offsets[l] + g: 1.0 for g in range(len(problem.choices[l]))}, 1.0, 1.0)
    for (i, j), base in pair_offsets.items():
        ni, nj = len(problem.choices[i]), len(problem.choices[j])
        for a in range(ni):
            row({base + a * nj + b: 1.0 for b in range(nj)} | {offsets[i] + a: -1.0}, 0.0, 0.0)
        for b in range(nj):
            row({base + a * nj + b: 1.0 for a in range(ni)} | {offsets[j] + b: -1.0}, 0.0, 0.0)
    for costs, budget, fixed in ((problem.size, problem.max_size, problem.fixed_size),
                                 (problem.latency, problem.max_latency, problem.fixed_latency)):
        if budget is not None:
            row({offsets[l] + g: float(c) for l, options in enumerate(costs) for g, c in enumerate(options)},
                -np.inf, budget - fixed)
    return rows, lower, upper


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
    """The GA. Every individual is made feasible (repaired: _lower_until_feasible; a child the
    repair cannot place is replaced by its first parent) before it is scored, so every
    generation's best is within budget. The greedy answer is one of the first
    population's individuals; the last generation's best is polished by a local search
    (_local_search). `progress(generation, best)` is called after each generation."""
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
    first = _lower_until_feasible(problem, top, None, finish=True)
    population = [first if first is not None else _smallest_within_latency(problem)]
    for _ in range(20 * config.population):   # random starts the repair cannot place are drawn again
        if len(population) >= config.population:
            break
        found = _lower_until_feasible(problem, np.array([rng.integers(len(c)) for c in problem.choices]), rng,
                                      finish=True)
        if found is not None:
            population.append(found)
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
            repaired = _lower_until_feasible(problem, child, rng, finish=True)
            children.append(repaired if repaired is not None else a.copy())
        population = children
    polished = _local_search(problem, best, score)
    if score(polished) < score(best) - 1e-15:
        best = polished
        history.append((score(best), *problem.totals(best)))
    front = pareto_front(problem, seen)
    return _answer(problem, "genetic", best, start, evaluated=len(seen), history=history, front=front)


def _local_search(problem: BitProblem, genes: np.ndarray, score) -> np.ndarray:
    """The GA's best polished: raise one layer (to any higher choice), lower the others by the
    repair until within budget, and take the best such move while one lowers the objective. Where sensitivities span orders of magnitude (the
    ImageNet MobileNetV2's), the optimum trades one large layer's bits for many small layers'
    (20 of 51 layers differ), which crossovers seldom assemble."""
    best = genes
    while True:
        trials = []
        for i in range(len(best)):
            for choice in range(best[i] + 1, len(problem.choices[i])):
                raised = best.copy()
                raised[i] = choice
                trial = _lower_until_feasible(problem, raised, None, pinned=i, finish=True)
                if trial is not None:
                    trials.append(trial)
        better = min(trials, key=score, default=None)
        if better is None or score(better) >= score(best) - 1e-15:
            return best
        best = better


def _tournament(population: list, score, size: int, rng: np.random.Generator) -> np.ndarray:
    entrants = [population[int(i)] for i in rng.integers(len(population), size=size)]
    return min(entrants, key=score)


def pareto_front(problem: BitProblem, seen: dict[tuple, float]) -> list[tuple]:
    """(size, latency, objective, bits) of the seen assignments within budget that no other beats
    on all three."""
    points = sorted((*problem.totals(np.array(k)), v, tuple(int(c[g]) for c, g in zip(problem.choices, k)))
                    for k, v in seen.items() if problem.feasible(np.array(k)))
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
