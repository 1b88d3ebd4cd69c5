"""Block controls: what the trainer sets on each block before a step (layer dropping) is
honoured by the whole model and by every pipeline stage."""

from __future__ import annotations

import torch

from triforge.models import ModelConfig, build_model, materialize
from triforge.models.transformer import CAUSAL
from triforge.parallel.pipeline import split_model, stage_layers

CFG = ModelConfig(name="t", d_model=32, n_layers=4, n_heads=4, max_seq_len=16)
VOCAB = 64
TOKENS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))


def model():
    return materialize(build_model(CFG, vocab_size=VOCAB, attention_backend="sdpa"), "cpu",
                       seed=0)


def by_hand(m, *, skip: int, scale: float, scaled: int) -> torch.Tensor:
    """The forward written out: block ``skip`` left out, block ``scaled``'s residual
    branches multiplied by ``scale``."""
    h = m.tok_embeddings(TOKENS)
    for i, block in m.layers.items():
        if int(i) == skip:
            continue
        s = scale if int(i) == scaled else 1.0
        h = h + s * block.attention(block.attention_norm(h), rope_cos=m.rope_cos,
                                    rope_sin=m.rope_sin, mask=CAUSAL, positions=None)
        h = h + s * block.feed_forward(block.ffn_norm(h))
    return m.output(m.norm(h))


def test_dropped_block_is_skipped_and_scale_applies():
    m = model()
    controls = m.blocks_controls()
    assert sorted(controls) == [0, 1, 2, 3]
    controls[1].keep = False
    controls[2].residual_scale = 2.0
    with torch.no_grad():
        torch.testing.assert_close(m(TOKENS), by_hand(m, skip=1, scale=2.0, scaled=2))
        default = model()(TOKENS)
        assert (m(TOKENS) - default).abs().max() > 1e-3  # the controls changed the output


def test_every_pipeline_stage_honours_the_controls():
    whole = model()
    layers = stage_layers(CFG.n_layers, 2, [])
    parts = [split_model(whole, layers[i], first=i == 0, last=i == 1) for i in range(2)]
    for m in (whole, *parts):
        for layer, c in m.blocks_controls().items():
            c.keep = layer != 3  # the last stage's second block is dropped
            c.residual_scale = 0.5 if layer == 0 else 1.0
    with torch.no_grad():
        torch.testing.assert_close(parts[1](parts[0](TOKENS)), whole(TOKENS), rtol=0, atol=0)
        torch.testing.assert_close(whole(TOKENS), by_hand(whole, skip=3, scale=0.5, scaled=0))
