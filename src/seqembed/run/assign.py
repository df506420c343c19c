"""Balanced assignment of FASTA files to devices, minimizing the makespan.

The plan is advisory: at run time files start longest-first and each claims whichever device
is free, so nothing here is enforced. What the plan provides is a preferred device per file
(so that an uncontended run lands where planned) and a yardstick: the planned per-device load,
and a proven lower bound on the best possible makespan, against which the actual loads can be
judged.

LPT (longest first onto the least-loaded device) is within 4/3 of optimal and close to optimal
when there are many files that are small next to a device's share; it is weakest with few large
files, which is exactly where a small MILP is cheap. So LPT always runs and CBC, the solver
bundled with pulp, only tries to beat it on small instances that LPT has not already proven
optimal (LPT makespan == lower bound).
"""

from __future__ import annotations

import heapq
import operator
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Largest n_items * n_devices (binaries) for which CBC is tried. The MILP pays off with few files
# per device, where LPT can be several percent off (e.g. 37 files on 8 devices). With many files
# per device LPT is already within ~0.1% and CBC mostly hits its time limit without improving,
# so beyond this size it would only cost planning time.
MILP_MAX_CELLS = 2000


@dataclass(frozen=True)
class Assignment:
    device_of: dict[str, str]  # item name -> device label
    loads: dict[str, int]  # device label -> summed cost (every device, 0 if idle)
    makespan: int  # max(loads.values())
    lower_bound: int  # proven lower bound on the optimal makespan
    method: str  # "lpt", or "lpt+milp" when the MILP strictly improved on LPT
    lpt_makespan: int  # what plain LPT gave

    @property
    def proven_optimal(self) -> bool:
        return self.makespan == self.lower_bound


def lower_bound(costs: Iterable[int], n_devices: int) -> int:
    """Proven lower bound on the optimal makespan of ``costs`` over ``n_devices`` devices."""
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    c = sorted(costs, reverse=True)
    if not c:
        return 0
    m, n = n_devices, len(c)
    lb = max(c[0], -(-sum(c) // m))
    prefix = [0]
    for v in c:
        prefix.append(prefix[-1] + v)
    # Pigeonhole: of the k*m+1 largest items some device holds k+1, at least the k+1 smallest
    # of them (0-based indices k*m-k .. k*m).
    k = 1
    while k * m + 1 <= n:
        lb = max(lb, prefix[k * m + 1] - prefix[k * m - k])
        k += 1
    return lb


def _lpt(sizes: Sequence[int], m: int) -> list[int]:
    """Device index per item; ``sizes`` must already be sorted descending."""
    heap = [(0, d) for d in range(m)]  # (load, index): ties go to the earlier device
    out = []
    for s in sizes:
        load, d = heapq.heappop(heap)
        out.append(d)
        heapq.heappush(heap, (load + s, d))
    return out


def _loads(sizes: Sequence[int], dev: Sequence[int], m: int) -> list[int]:
    loads = [0] * m
    for s, d in zip(sizes, dev, strict=True):
        loads[d] += s
    return loads


def _milp(
    sizes: Sequence[int], m: int, start: Sequence[int], lb: int, ub: int, time_limit_s: float
) -> tuple[list[int], bool] | None:
    """CBC solution (device per item, proven optimal?) or None when it has none to offer."""
    import pulp

    n = len(sizes)
    prob = pulp.LpProblem("makespan", pulp.LpMinimize)
    # pulp 3.x warns on direct LpVariable(...) and wants prob.add_variable; 2.x lacks it.
    add = getattr(prob, "add_variable", None) or pulp.LpVariable
    # Devices are interchangeable, so only allow item j (sorted descending) onto devices 0..j:
    # any solution can be relabelled so that devices are first used in item order. This also
    # pins the largest item to device 0. LPT already satisfies it, so the warm start is valid.
    x = {
        (j, d): add(f"x_{j}_{d}", 0, 1, pulp.LpBinary)
        for j in range(n)
        for d in range(min(j + 1, m))
    }
    # Integer (loads are integral): CBC can then prune by whole units and prove optimality sooner.
    cmax = add("C", lb, ub, pulp.LpInteger)
    prob += cmax
    for j in range(n):
        prob += pulp.lpSum(x[j, d] for d in range(min(j + 1, m))) == 1
    for d in range(m):
        prob += pulp.lpSum(sizes[j] * x[j, d] for j in range(d, n)) <= cmax
    for (j, d), var in x.items():
        var.setInitialValue(1 if start[j] == d else 0)
    cmax.setInitialValue(ub)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PULP_CBC_CMD is "deprecated" in 3.x
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, warmStart=True)
    prob.solve(solver)
    # LpStatus reads "Optimal" even after a time-out with an incumbent; sol_status tells them apart.
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None
    dev = []
    for j in range(n):
        chosen = [d for d in range(min(j + 1, m)) if (x[j, d].value() or 0) > 0.5]
        if len(chosen) != 1:
            return None
        dev.append(chosen[0])
    return dev, prob.sol_status == pulp.LpSolutionOptimal


def assign(
    costs: Mapping[str, int], devices: Sequence[str], *, time_limit_s: float = 5.0
) -> Assignment:
    """Assign every item of ``costs`` to one of ``devices``, minimizing the largest load.

    Deterministic for the same input, except when CBC runs into ``time_limit_s``: the incumbent
    it stops with depends on timing (it is never worse than LPT). ``time_limit_s <= 0`` means
    plain LPT.
    """
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    if len(set(devices)) != len(devices):
        raise ValueError(f"duplicate device labels: {devices}")
    # operator.index accepts numpy integers but rejects floats.
    checked = {name: operator.index(c) for name, c in costs.items()}
    if any(c < 0 for c in checked.values()):
        raise ValueError("costs must be non-negative")

    m = len(devices)
    names = sorted(checked, key=lambda f: (-checked[f], f))
    sizes = [checked[f] for f in names]
    lb = lower_bound(sizes, m)
    dev = _lpt(sizes, m)
    lpt_makespan = max(_loads(sizes, dev, m))
    method = "lpt"

    if m > 1 and lpt_makespan > lb and len(sizes) * m <= MILP_MAX_CELLS and time_limit_s > 0:
        try:
            found = _milp(sizes, m, dev, lb, lpt_makespan, time_limit_s)
        except Exception:  # the plan is advisory; a solver problem must never break a run
            found = None
        if found is not None:
            milp_dev, proven = found
            milp_makespan = max(_loads(sizes, milp_dev, m))
            if proven:
                # The recomputed makespan of a proven-optimal integer solution is the optimum.
                lb = max(lb, min(milp_makespan, lpt_makespan))
            if milp_makespan < lpt_makespan:
                dev, method = milp_dev, "lpt+milp"

    loads = _loads(sizes, dev, m)
    return Assignment(
        device_of={f: devices[d] for f, d in zip(names, dev, strict=True)},
        loads={label: loads[d] for d, label in enumerate(devices)},
        makespan=max(loads),
        lower_bound=lb,
        method=method,
        lpt_makespan=lpt_makespan,
    )


__all__ = ["MILP_MAX_CELLS", "Assignment", "assign", "lower_bound"]
