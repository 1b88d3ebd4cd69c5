"""Step hooks: the places where features that live beside the loop plug into it.

Layer dropping sets each block's controls at ``step_start``; an expert-bias update (MoE
auxiliary-loss-free balancing) runs ``after_optimizer_step``; router statistics become
metrics ``at_log``. Hooks are called in the order they were added, on every rank (they
may run collectives, so every rank must have the same hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StepHooks:
    # step (1-based) about to run forward/backward
    step_start: list[Callable[[int], None]] = field(default_factory=list)
    # the update of ``step`` is about to be applied / was applied (not called for a skipped
    # step, whose parameters and optimizer state stay untouched)
    before_optimizer_step: list[Callable[[int], None]] = field(default_factory=list)
    after_optimizer_step: list[Callable[[int], None]] = field(default_factory=list)
    # the step is over (applied or skipped), before evaluation and logging
    step_end: list[Callable[[int], None]] = field(default_factory=list)
    # a logged step's metrics, before the sinks see them: a hook may add entries
    at_log: list[Callable[[int, dict], None]] = field(default_factory=list)

    def run(self, point: str, *args) -> None:
        for hook in getattr(self, point):
            hook(*args)
