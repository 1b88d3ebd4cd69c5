"""Schema of the ``objective`` config group."""

from __future__ import annotations

from dataclasses import dataclass, field

UL2_MODES = ("R", "S", "X")


@dataclass
class ObjectiveConfig:
    """Which training objective turns token windows into batches, and its noise knobs.

    name: ``clm`` (next token), ``mlm`` (masked tokens, bidirectional), ``span`` (T5 span
        corruption as a prefix LM) or ``ul2`` (a per-sample mix of R/S/X denoisers).
    mask_prob: mlm, the fraction of tokens selected for prediction.
    noise_density, mean_span: span, the fraction of raw tokens hidden and the mean length of
        a hidden span.
    num_sentinels: span and ul2, the sentinel tokens added to the vocabulary; also the most
        spans one sample may hide.
    ul2_weights: ul2, the sampling weights of the R, S and X denoisers (normalised).
    ul2_r_*, ul2_x_*: ul2, (mean span, noise density) of the regular and extreme denoisers.
        The default X is the long-span variant of the UL2 paper; set
        ``ul2_x_mean_span=3 ul2_x_noise_density=0.5`` for its high-corruption variant.
    """

    name: str = "clm"
    mask_prob: float = 0.15
    noise_density: float = 0.15
    mean_span: float = 3.0
    num_sentinels: int = 100
    ul2_weights: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.25])
    ul2_r_mean_span: float = 3.0
    ul2_r_noise_density: float = 0.15
    ul2_x_mean_span: float = 32.0
    ul2_x_noise_density: float = 0.15

    def validate(self) -> None:
        """Raise ValueError with one line naming the first field that breaks its rule."""
        from . import OBJECTIVES  # the registry imports this module, so import it late

        if self.name not in OBJECTIVES:
            raise ValueError(f"objective '{self.name}' is not one of {sorted(OBJECTIVES)}")
        for key in ("mask_prob", "noise_density", "ul2_r_noise_density", "ul2_x_noise_density"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ValueError(f"objective.{key}({value}) must be in (0, 1)")
        for key in ("mean_span", "ul2_r_mean_span", "ul2_x_mean_span"):
            value = getattr(self, key)
            if value < 1.0:
                raise ValueError(f"objective.{key}({value}) must be >= 1")
        if self.num_sentinels < 1:
            raise ValueError(f"objective.num_sentinels({self.num_sentinels}) must be >= 1")
        weights = list(self.ul2_weights)
        if len(weights) != len(UL2_MODES) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"objective.ul2_weights({weights}) must be {len(UL2_MODES)} weights for "
                f"{'/'.join(UL2_MODES)}, each >= 0, with a positive sum"
            )
