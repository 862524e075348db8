"""Successive halving over sample-count rungs: a trial goes on only if it is among the best at its rung.

Optuna's ``SuccessiveHalvingPruner`` places rungs at ``min_resource * eta**k`` steps; our rungs are
the sample counts of the objective (e.g. 2000, 10000), which need not be geometric, and a Fréchet
distance from 2000 samples is biased upwards relative to one from 10000, so values are compared
only between trials at the *same* step (= the same number of samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from skiptune.errors import SkiptuneError
from skiptune.objectives.spec import check_rungs

_PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class RungPruner(BasePruner):
    """Prune at rung ``r`` (every rung but the last) unless the value is in the best ``1/reduction_factor``.

    Until ``min_peers`` other trials reported the same rung nothing is pruned (too few to rank).
    """

    def __init__(self, rungs: Sequence[int], *, reduction_factor: int = 3, min_peers: int = 4) -> None:
        self.rungs = list(check_rungs(rungs))
        if reduction_factor < 2:
            raise SkiptuneError(f"bad reduction factor {reduction_factor}: expected an integer >= 2")
        self.reduction_factor = reduction_factor
        self.min_peers = min_peers

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rungs[:-1]:
            return False  # the last rung is the result; unknown steps are not ours to judge
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        peers = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=_PEER_STATES)
            if t.number != trial.number and step in t.intermediate_values
        ]
        peers = [v for v in peers if not math.isnan(v)]
        if len(peers) < self.min_peers:
            return False
        ranked = sorted([*peers, value])
        keep = max(1, len(ranked) // self.reduction_factor)
        return value > ranked[keep - 1]  # minimising a distance
