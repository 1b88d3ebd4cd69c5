"""Small pieces of training state that checkpoints carry besides model and optimizer.

Each has ``state_dict()``/``load_state_dict()`` (torch's Stateful protocol) returning plain
JSON-able values; tensors (model, optimizer) go through torch.distributed.checkpoint instead.
"""

from __future__ import annotations

import base64
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from triforge.models import Transformer


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0
    skipped_steps: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) generator states of this rank."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "python": _encode_python(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        }
        if torch.cuda.is_available():
            state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(_decode_python(state["python"]))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(_bytes_tensor(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(_bytes_tensor(state["cuda"]))


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _encode_python(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _decode_python(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _bytes_tensor(b64: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8).clone()


class ModelOptimizerState:
    """Model parts and their optimizers keyed by fully qualified parameter names, via torch's
    distributed state-dict helpers: sharded parameters (DTensors), pipeline stages and the
    single-process model all save under the same names. The optimizer state is flattened
    (``state.<param>.exp_avg``, ``param_groups.<param>.lr``) so no key depends on how
    parameters are grouped into parts.

    A tied embedding is one parameter in one process (its optimizer state is keyed
    ``tok_embeddings.weight``) but two copies under pipeline parallelism; the last stage's
    copy (``output.weight``) keeps its optimizer state under the embedding's name too, so
    the two copies' (equal) states are one entry and a checkpoint of either form loads into
    the other."""

    _OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)

    def __init__(self, parts: list[nn.Module], optimizers: list[torch.optim.Optimizer]):
        self.pairs = list(zip(parts, optimizers, strict=True))

    def state_dict(self) -> dict:
        model_sd, optim_sd = {}, {}
        for part, opt in self.pairs:
            m, o = get_state_dict(part, opt, options=self._OPTIONS)
            model_sd.update(m)
            optim_sd.update(_rename(o, _optim_aliases(part)))
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict) -> None:
        for part, opt in self.pairs:
            names = set(get_model_state_dict(part))
            back = {new: old for old, new in _optim_aliases(part).items()}
            set_state_dict(
                part, opt, model_state_dict={k: state["model"][k] for k in names},
                optim_state_dict=_rename(state["optim"], back), options=self._OPTIONS,
            )


def _optim_aliases(part: nn.Module) -> dict[str, str]:
    """Parameter name -> the name its optimizer state is saved under, where they differ."""
    if isinstance(part, Transformer) and part.tied_head_copy() is not None:
        return {"output.weight": "tok_embeddings.weight"}
    return {}


def _rename(flat: dict, aliases: dict[str, str]) -> dict:
    """Flattened optimizer keys (``state.<param>.<field>``, ``param_groups.<param>.<field>``)
    with each aliased parameter name replaced."""
    if not aliases:
        return flat
    out = {}
    for key, value in flat.items():
        kind, _, rest = key.partition(".")
        for name, alias in aliases.items():
            if rest.startswith(name + "."):
                rest = alias + rest[len(name):]
        out[f"{kind}.{rest}"] = value
    return out


class ModelState:
    """The model alone (generation, export, a continued run's start): loads the model part
    of a training checkpoint into a model or into this rank's model parts."""

    def __init__(self, model: nn.Module | list[nn.Module]):
        self.parts = model if isinstance(model, list) else [model]

    def state_dict(self) -> dict:
        return {"model": {k: v for part in self.parts
                          for k, v in get_model_state_dict(part).items()}}

    def load_state_dict(self, state: dict) -> None:
        for part in self.parts:
            names = set(get_model_state_dict(part))
            set_model_state_dict(part, {k: state["model"][k] for k in names})
