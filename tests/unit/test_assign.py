import itertools
import math
import random

import pulp
import pytest

from seqembed.run import assign as assign_mod
from seqembed.run.assign import Assignment, assign, lower_bound

# Short solver limit: a time-out only means "LPT or the CBC incumbent", which the sweep must
# tolerate anyway; tiny instances are solved to optimality in milliseconds.
SWEEP_TIME_LIMIT_S = 2.0


def reference_lpt(costs: dict[str, int], devices: list[str]) -> tuple[dict[str, str], int]:
    """Plain LPT written independently of the module (linear scan, no heap)."""
    loads = [0] * len(devices)
    placed = {}
    for name in sorted(costs, key=lambda f: (-costs[f], f)):
        d = min(range(len(devices)), key=lambda i: (loads[i], i))
        loads[d] += costs[name]
        placed[name] = devices[d]
    return placed, max(loads)


def brute_force_optimum(costs: list[int], m: int) -> int:
    best = math.inf
    for combo in itertools.product(range(m), repeat=len(costs)):
        loads = [0] * m
        for c, d in zip(costs, combo, strict=True):
            loads[d] += c
        best = min(best, max(loads))
    return 0 if best == math.inf else best


def check_consistent(a: Assignment, costs: dict[str, int], devices: list[str]) -> None:
    assert set(a.device_of) == set(costs)  # every item exactly once (keys are unique)
    assert set(a.device_of.values()) <= set(devices)
    assert list(a.loads) == devices
    for d in devices:
        assert a.loads[d] == sum(c for f, c in costs.items() if a.device_of[f] == d)
    assert a.makespan == max(a.loads.values())
    assert lower_bound(costs.values(), len(devices)) <= a.lower_bound <= a.makespan
    assert a.makespan <= a.lpt_makespan
    assert a.method in ("lpt", "lpt+milp")
    assert (a.method == "lpt+milp") == (a.makespan < a.lpt_makespan)


def draw(rng: random.Random, dist: str, n: int) -> list[int]:
    if dist == "uniform":
        return [rng.randint(200, 5000) for _ in range(n)]
    if dist == "lognormal":
        return [max(1, round(rng.lognormvariate(7.5, 1.3))) for _ in range(n)]
    if dist == "pareto":
        return [round(200 * rng.paretovariate(1.1)) for _ in range(n)]
    # proteome-like: mostly small files, a few giants
    return [
        round(rng.lognormvariate(11, 0.5)) if rng.random() < 0.05 else rng.randint(200, 3000)
        for _ in range(n)
    ]


@pytest.mark.parametrize("dist", ["uniform", "lognormal", "pareto", "mixed"])
@pytest.mark.parametrize("n", [10, 37, 200, 2000])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_random_sweep(dist, n, m):
    rng = random.Random(f"{dist}/{n}/{m}")
    costs = {f"sample_{i:04d}.fasta": c for i, c in enumerate(draw(rng, dist, n))}
    devices = [f"cuda:{d}" for d in range(m)]
    a = assign(costs, devices, time_limit_s=SWEEP_TIME_LIMIT_S)
    check_consistent(a, costs, devices)
    ref_placed, ref_makespan = reference_lpt(costs, devices)
    assert a.lpt_makespan == ref_makespan
    assert a.makespan <= ref_makespan
    if a.method == "lpt":
        assert a.device_of == ref_placed
    assert a.makespan <= 1.02 * a.lower_bound


@pytest.mark.parametrize("seed", range(120))
def test_small_instances_against_brute_force(seed):
    rng = random.Random(seed)
    n, m = rng.randint(1, 8), rng.randint(1, 3)
    hi = rng.choice([3, 20, 5000])  # small ranges give ties and zeros
    sizes = [rng.randint(0, hi) for _ in range(n)]
    costs = {f"f{i}": c for i, c in enumerate(sizes)}
    devices = [f"cuda:{d}" for d in range(m)]
    opt = brute_force_optimum(sizes, m)

    assert lower_bound(sizes, m) <= opt
    a = assign(costs, devices)
    check_consistent(a, costs, devices)
    assert a.lower_bound <= opt <= a.makespan
    if a.makespan == a.lower_bound:
        assert a.makespan == opt
    # CBC proves these tiny instances optimal at once, so the bound must have been raised.
    assert a.proven_optimal
    assert a.makespan == opt


def test_lower_bound_pigeonhole_terms():
    assert lower_bound([], 3) == 0
    assert lower_bound([7], 4) == 7
    assert lower_bound([5, 5, 5], 2) == 10  # k=1: c2+c3 beats ceil(15/2)=8
    assert lower_bound([3] * 5, 2) == 9  # k=2: three of the five share a device
    assert lower_bound([10, 4, 4, 4], 3) == 10  # largest item
    assert lower_bound([4, 4, 4, 4], 3) == 8  # k=1: c3+c4 beats ceil(16/3)=6
    assert lower_bound([9, 6, 6, 6, 6], 4) == 12  # c4+c5 = 12 > max 9 > ceil(33/4)=9
    with pytest.raises(ValueError):
        lower_bound([1, 2], 0)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_milp_beats_lpt_on_graham_worst_case(m):
    # Graham's tight LPT example: LPT gives 4m-1, the optimum is 3m.
    sizes = [v for v in range(2 * m - 1, m, -1) for _ in range(2)] + [m] * 3
    costs = {f"f{i:02d}": c for i, c in enumerate(sizes)}
    devices = [f"cuda:{d}" for d in range(m)]
    a = assign(costs, devices)
    check_consistent(a, costs, devices)
    assert a.lpt_makespan == reference_lpt(costs, devices)[1] == 4 * m - 1
    assert a.makespan == a.lower_bound == 3 * m
    assert a.method == "lpt+milp"


def test_threshold_disables_milp(monkeypatch):
    m = 3
    sizes = [5, 5, 4, 4, 3, 3, 3]
    costs = {f"f{i}": c for i, c in enumerate(sizes)}
    devices = ["a", "b", "c"]
    monkeypatch.setattr(assign_mod, "MILP_MAX_CELLS", len(sizes) * m - 1)
    a = assign(costs, devices)
    assert a.method == "lpt"
    assert (a.makespan, a.lower_bound) == (11, 9)  # the bound stays the combinatorial one
    assert a.device_of == reference_lpt(costs, devices)[0]


def test_zero_time_limit_means_plain_lpt():
    costs = {f"f{i}": c for i, c in enumerate([5, 5, 4, 4, 3, 3, 3])}
    a = assign(costs, ["a", "b", "c"], time_limit_s=0)
    assert (a.method, a.makespan, a.lower_bound) == ("lpt", 11, 9)


def test_solver_failure_falls_back_to_lpt(monkeypatch):
    def broken(self, *args, **kwargs):
        raise pulp.PulpSolverError("cbc exploded")

    monkeypatch.setattr(pulp.LpProblem, "solve", broken)
    costs = {f"f{i}": c for i, c in enumerate([5, 5, 4, 4, 3, 3, 3])}
    a = assign(costs, ["a", "b", "c"])
    check_consistent(a, costs, ["a", "b", "c"])
    assert (a.method, a.makespan, a.lower_bound) == ("lpt", 11, 9)


def test_time_out_does_not_raise_lower_bound():
    # CBC cannot close this gap in a fraction of a second: the incumbent it stops with is not
    # proven, so the bound must stay the combinatorial one even though pulp says "Optimal".
    rng = random.Random("uniform/37/8")
    costs = {f"f{i:02d}": rng.randint(200, 5000) for i in range(37)}
    devices = [f"cuda:{d}" for d in range(8)]
    a = assign(costs, devices, time_limit_s=0.2)
    check_consistent(a, costs, devices)
    assert a.lower_bound == lower_bound(costs.values(), 8)
    assert a.makespan > a.lower_bound


def test_empty_costs():
    a = assign({}, ["cuda:0", "cuda:1"])
    assert a.device_of == {}
    assert a.loads == {"cuda:0": 0, "cuda:1": 0}
    assert (a.makespan, a.lower_bound, a.lpt_makespan, a.method) == (0, 0, 0, "lpt")


def test_one_device():
    costs = {"a": 3, "b": 9, "c": 1}
    a = assign(costs, ["cuda:0"])
    assert a.device_of == {"a": "cuda:0", "b": "cuda:0", "c": "cuda:0"}
    assert a.loads == {"cuda:0": 13}
    assert a.makespan == a.lower_bound == 13


def test_more_devices_than_files():
    costs = {"a": 300, "b": 900, "c": 100}
    devices = [f"cuda:{d}" for d in range(5)]
    a = assign(costs, devices)
    check_consistent(a, costs, devices)
    assert a.makespan == a.lower_bound == 900
    assert len(set(a.device_of.values())) == 3
    assert sorted(a.loads.values()) == [0, 0, 100, 300, 900]


def test_all_zero_costs():
    costs = {f"f{i}": 0 for i in range(6)}
    devices = ["cuda:0", "cuda:1", "cuda:2"]
    a = assign(costs, devices)
    check_consistent(a, costs, devices)
    assert (a.makespan, a.lower_bound, a.method) == (0, 0, "lpt")


@pytest.mark.parametrize("n,m", [(9, 3), (37, 2), (2000, 4)])
def test_deterministic(n, m):
    rng = random.Random(n * 100 + m)
    items = [(f"f{i:04d}", rng.choice([100, 200, 300, rng.randint(1, 5000)])) for i in range(n)]
    devices = [f"cuda:{d}" for d in range(m)]
    first = assign(dict(items), devices)
    again = assign(dict(items), devices)
    shuffled = items[:]
    rng.shuffle(shuffled)
    reordered = assign(dict(shuffled), devices)  # insertion order must not matter
    assert first == again == reordered


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        assign({"a": 1}, [])
    with pytest.raises(ValueError):
        assign({"a": 1}, ["cuda:0", "cuda:0"])
    with pytest.raises(ValueError):
        assign({"a": -1}, ["cuda:0"])
    with pytest.raises(TypeError):
        assign({"a": 1.5}, ["cuda:0"])
