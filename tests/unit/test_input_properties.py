"""Every input the schema lets through is one the code can run; everything else is one line.

Property tests (hypothesis, seeded and bounded): override lists are generated from the
config schema itself (every leaf field, values of its type and beyond it: negatives, zero,
huge, NaN, infinity, text), layouts from the parallel degrees against world sizes, and
environments from the launcher variables. Each case must end in either the project's own
one-line error or a value that passes every check made before any work starts; any other
exception is a traceback a user would see.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triforge.errors import TriforgeError
from triforge.launcher.config import JobConfig, load_config
from triforge.launcher.env import ProcessEnv, read_env
from triforge.launcher.train import resolve_layout
from triforge.models import build_model
from triforge.parallel import ParallelConfig, ParallelDims

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def leaves(schema=JobConfig, prefix="") -> dict[str, type]:
    """Dotted key -> type of every leaf field of the schema."""
    out = {}
    for name, kind in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(kind):
            out.update(leaves(kind, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = kind
    return out


LEAVES = leaves()
NUMBERS = st.one_of(
    st.integers(-3, 3), st.integers(-2**40, 2**40), st.sampled_from([2**32, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
TEXT = st.one_of(st.sampled_from(["", "auto", "none", "true", "2", "null", "[1,2]", "nope",
                                  "cuda", "cpu", "bpe", "ul2", "1f1b"]),
                 st.text("abcxyz_-.01", max_size=6))


def value_for(kind) -> st.SearchStrategy[str]:
    """Override text for a field of type ``kind``: mostly plausible, often not."""
    typed = {int: st.integers(-5, 300).map(str), float: st.floats(-2, 10).map(repr),
             bool: st.sampled_from(["true", "false"]), str: TEXT}.get(kind)
    wild = st.one_of(NUMBERS.map(str), TEXT)
    if typing.get_origin(kind) is list:
        items = st.lists(st.one_of(st.integers(-2, 9), st.floats(allow_nan=True)), max_size=4)
        return st.one_of(items.map(lambda xs: "[" + ",".join(map(str, xs)) + "]"), wild)
    return st.one_of(typed, wild) if typed is not None else wild


@st.composite
def override_lists(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(LEAVES)), min_size=1, max_size=3, unique=True))
    extra = draw(st.lists(st.sampled_from(["model=tiny", "model=nope", "model=null",
                                           "precision=bf16", "objective=mlm",
                                           "trainer.Max_steps=3"]), max_size=1))
    return [*extra, *(f"{k}={draw(value_for(LEAVES[k]))}" for k in keys)]


def one_line_error(exc: BaseException) -> None:
    assert isinstance(exc, TriforgeError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc) and str(exc), repr(exc)


@SETTINGS
@given(override_lists(), st.sampled_from([1, 2, 4, 8]))
def test_generated_overrides_fail_in_one_line_or_pass_every_pre_work_check(overrides, world):
    try:
        job = load_config(overrides)
        dims = resolve_layout(job, ProcessEnv(world_size=world))
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        one_line_error(exc)
        return
    assert dims.world_size == world
    assert all(math.isfinite(v) for v in floats(job)), overrides  # runnable numbers only
    try:  # the byte tokenizer's 256 ids plus an objective's few special tokens
        vocab = job.model.padded_vocab(256 + 200)
    except ValueError as exc:  # the launcher reports this one as a ConfigError
        assert "\n" not in str(exc)
        return
    model = build_model(job.model, vocab_size=vocab, attention_backend="reference")
    assert sum(p.numel() for p in model.parameters()) == job.model.num_params(vocab)


def floats(obj):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from floats(value)
        elif isinstance(value, float):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, float))


DEGREES = st.integers(-2, 5)


@SETTINGS
@given(st.builds(ParallelConfig, dp_replicate=DEGREES, dp_shard=st.integers(-2, 5), cp=DEGREES,
                 tp=DEGREES, pp=DEGREES, ep=st.integers(-1, 8)),
       st.integers(1, 16))
def test_layouts_either_tile_the_world_or_say_why(cfg, world):
    try:
        dims = ParallelDims.from_config(cfg, world)
    except ValueError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    groups = dims.rank_groups()
    for name, rank_sets in groups.items():  # every role partitions the ranks
        flat = sorted(r for ranks in rank_sets for r in ranks)
        assert flat == list(range(world)), name
    assert dims.dp_replicate * dims.dp_shard * dims.cp * dims.tp * dims.pp == world


ENV_VALUE = st.one_of(st.integers(-3, 20).map(str), TEXT, st.sampled_from(["0", "1", " 3 "]))
ENV_KEYS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SLURM_LOCALID", "SLURM_NODELIST", "TORCHELASTIC_RESTART_COUNT"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(ENV_KEYS), ENV_VALUE, max_size=6))
def test_the_environment_reader_accepts_a_consistent_process_or_says_why(environ):
    try:
        env = read_env(environ)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)
        return
    assert 0 <= env.rank < env.world_size and 0 <= env.local_rank < env.world_size


def test_every_number_field_refuses_nan_and_infinity():
    """Swept over the schema: no float field, alone or in a list, means anything at NaN or
    infinity, so each is refused in one line naming the field."""
    for key, kind in LEAVES.items():
        if kind is float or kind == list[float]:
            for bad in ("nan", "inf", "-inf"):
                value = f"[{bad},1,1]" if kind == list[float] else bad
                try:
                    load_config([f"{key}={value}"])
                except TriforgeError as exc:
                    assert key in str(exc) and "\n" not in str(exc), (key, str(exc))
                else:
                    raise AssertionError(f"{key}={value} was accepted")


def test_every_boolean_field_refuses_other_values():
    for key, kind in LEAVES.items():
        if kind is bool:
            for bad in ("2", "yes please", "0.5"):
                try:
                    load_config([f"{key}={bad}"])
                except TriforgeError as exc:
                    assert f"{key}={bad} must be true or false" in str(exc)
                else:
                    raise AssertionError(f"{key}={bad} was accepted")
