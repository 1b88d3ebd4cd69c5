"""Checkpoints of a DeepSpeed-trained model in triforge's own format.

``DeepSpeedState`` gives torch.distributed.checkpoint the same keys as ``ModelOptimizerState``
(``model.<fqn>``, and the flattened optimizer state ``state.<fqn>.exp_avg``,
``param_groups.<fqn>.lr``, ...), assembled from DeepSpeed's partitions with its public
``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state`` and written back with the
``safe_set_*`` counterparts. A checkpoint therefore resumes under either engine, in any
ZeRO stage or FSDP2 layout, with no conversion step (no ``zero_to_fp32``). The price:
every rank holds each whole tensor while the state dict exists, which suits models whose
fp32 weights and moments fit a rank's memory; DeepSpeed's own sharded format is the way
past that (not done).

Writing back a parameter updates both copies DeepSpeed keeps: the fp32 master partition
and the model's own weight (whole under ZeRO-1/2; under ZeRO-3 its partition, through
``GatheredParameters`` with rank 0 as the modifier: every rank loads the same values).

Two DeepSpeed 0.19 details are handled here. AdamW creates its state at its first step,
so a resume (before any step) creates it first, zero, as AdamW would (for ZeRO-3 on its
``fp32_partitioned_groups_flat``, which the groups hold only during an update). And ZeRO-1/2 link
each parameter to its optimizer-state fragment once, right after the first parameter
group's update, when the second group (our no-decay group) has no state yet: its
parameters then fail with "exp_avg not found in optimizer state fragment". The link is
made again before the state is read or written (``_relink``).
"""

from __future__ import annotations

import torch
from torch import nn

MOMENTS = ("exp_avg", "exp_avg_sq")


class DeepSpeedState:
    """``weights_only``: the model alone (``checkpoint.init_from`` with ``load=weights``,
    as ``ModelState``); the optimizer state is left as it is."""

    def __init__(self, ds_engine, part: nn.Module, optimizer: torch.optim.Optimizer,
                 stage: int, *, weights_only: bool = False):
        self.ds, self.part, self.optimizer, self.stage = ds_engine, part, optimizer, stage
        self.weights_only = weights_only
        self.params = [(n, p) for n, p in part.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        self._ensure_optimizer_state()
        full = {id(p): safe_get_full_fp32_param(p).detach().clone() for _, p in self.params}
        model = {name: full[id(p)]
                 for name, p in self.part.named_parameters(remove_duplicate=False)}
        if self.weights_only:
            return {"model": model}
        step, optim = self._step(), {}
        for (name, p), group in zip(self.params, self._groups(), strict=True):
            for key in MOMENTS:
                optim[f"state.{name}.{key}"] = safe_get_full_optimizer_state(p, key).clone()
            optim[f"state.{name}.step"] = step.clone()
            for key, value in group.items():
                if key != "params":
                    optim[f"param_groups.{name}.{key}"] = value
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        self._ensure_optimizer_state()
        for name, p in self.params:
            value = state["model"][name]
            self._set_weight(p, value)
            safe_set_full_fp32_param(p, value.float())
            if self.weights_only:
                continue
            for key in MOMENTS:
                safe_set_full_optimizer_state(p, state["optim"][f"state.{name}.{key}"], key)
        if self.weights_only:
            return
        (step,) = {float(state["optim"][f"state.{n}.step"]) for n, _ in self.params}
        for entry in self.optimizer.state.values():
            entry["step"] = torch.tensor(step, dtype=torch.float32)

    def _set_weight(self, p: nn.Parameter, value: torch.Tensor) -> None:
        if self.stage < 3:
            with torch.no_grad():
                p.copy_(value)
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
            p.copy_(value)

    def _ensure_optimizer_state(self) -> None:
        """AdamW's state for each of DeepSpeed's flat partitions (zero before any step, as
        AdamW makes it), linked to the parameters' fragments."""
        for flat in self._flat_partitions():
            entry = self.optimizer.state[flat]
            if not entry:
                entry["step"] = torch.tensor(0.0)
                for key in MOMENTS:
                    entry[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        self._relink()

    def _flat_partitions(self) -> list[torch.Tensor]:
        """The fp32 partitions AdamW updates: its param groups' under ZeRO-1/2; under ZeRO-3
        they are put into the groups only for each sub-group's update."""
        if self.stage == 3:
            return list(self.ds.optimizer.fp32_partitioned_groups_flat)
        return [flat for group in self.optimizer.param_groups for flat in group["params"]]

    def _relink(self) -> None:
        zero = self.ds.optimizer
        if self.stage < 3 and hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
            zero._hp_optimizer_states_linked = False  # see the module docstring
            zero._lazy_init_hp_params_optimizer_state()

    def _step(self) -> torch.Tensor:
        """AdamW's step count: DeepSpeed's flat partitions all share it."""
        (step,) = {float(entry["step"]) for entry in self.optimizer.state.values()}
        return torch.tensor(step, dtype=torch.float32)

    def _groups(self) -> list[dict]:
        """Each parameter's AdamW group, in ``params`` order (build_optimizer's rule:
        matrices decay, vectors do not)."""
        groups = self.optimizer.param_groups  # ZeRO-3 may split a group into sub-groups
        decay, no_decay = groups[0], groups[-1]
        # Under ZeRO-3 a parameter's own tensor is an empty placeholder: ds_shape is its shape.
        return [decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay
                for _, p in self.params]
