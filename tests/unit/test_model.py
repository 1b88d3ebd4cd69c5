import pytest
import torch

from triforge.launcher.config import load_config
from triforge.models import ModelConfig, build_model, materialize
from triforge.models.rope import apply_rope, rope_cos_sin


def tiny(**kw) -> ModelConfig:
    base = dict(name="t", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


def make(cfg: ModelConfig, vocab: int = 320, backend: str = "sdpa"):
    return materialize(build_model(cfg, vocab_size=vocab, attention_backend=backend), "cpu", seed=0)


def test_logits_shape_and_param_count():
    cfg = tiny()
    model = make(cfg)
    logits = model(torch.randint(0, 320, (3, 17)))
    assert logits.shape == (3, 17, 320)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params(320)


def test_causal_future_tokens_do_not_change_past_logits():
    model = make(tiny())
    x = torch.randint(0, 320, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 320, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_same_seed_same_weights_and_blocks_keyed_by_index():
    a, b = make(tiny()), make(tiny())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert list(a.layers.keys()) == ["0", "1"]
    assert "layers.1.attention.wq.weight" in dict(a.named_parameters())


def test_tied_head_shares_the_embedding_after_materialize():
    model = make(tiny(tie_embeddings=True))
    assert model.output.weight is model.tok_embeddings.weight


def test_reference_and_sdpa_backends_agree():
    x = torch.randint(0, 320, (2, 33))
    ref, sdpa = make(tiny(), backend="reference"), make(tiny(), backend="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(ref(x), sdpa(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset,billions", [("gpt2_124m", 0.12), ("llama_1b", 1.24),
                                             ("llama_8b", 8.03)])
def test_realistic_presets_build_on_meta(preset, billions):
    job = load_config([f"model={preset}"])
    model = build_model(job.model, vocab_size=job.model.padded_vocab(258))
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert abs(n / 1e9 - billions) < 0.01


def test_tiny_preset_is_under_a_million_parameters():
    job = load_config(["model=tiny"])
    model = build_model(job.model, vocab_size=job.model.padded_vocab(258))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_rope_preserves_norms_and_encodes_relative_position():
    cos, sin = rope_cos_sin(torch.arange(32), 16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    rq = apply_rope(q.expand(1, 32, 1, 16), cos, sin)
    rk = apply_rope(k.expand(1, 32, 1, 16), cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1).expand(1, 32, 1))
    # <R_m q, R_n k> depends on m - n only.
    dots = (rq[0, :, 0, None, :] * rk[0, None, :, 0, :]).sum(-1)
    torch.testing.assert_close(dots[5, 2], dots[20, 17], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dots[3, 9], dots[10, 16], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dots[5, 2], dots[5, 3])


def test_model_config_errors_name_the_rule():
    with pytest.raises(ValueError, match=r"n_kv_heads\(3\) must divide model.n_heads\(4\)"):
        tiny(n_kv_heads=3).validate()
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        tiny(vocab_size=100).padded_vocab(258)


def test_activation_checkpointing_saves_less_and_keeps_names():
    from triforge.parallel.activation_checkpoint import apply_ac, saved_activation_bytes

    cfg = tiny(n_layers=4)
    tokens = torch.randint(0, 320, (2, 32))

    def saved(mode):
        model = build_model(cfg, vocab_size=320, attention_backend="sdpa")
        apply_ac(model, mode=mode, every=2)
        model = materialize(model, "cpu", seed=0)
        return model, saved_activation_bytes(lambda: model(tokens).sum())

    plain, none_bytes = saved("none")
    selective, sel_bytes = saved("selective")
    full, full_bytes = saved("full")
    assert full_bytes < sel_bytes < none_bytes
    assert set(full.state_dict()) == set(plain.state_dict())  # checkpoints keep plain names
    with torch.no_grad():
        torch.testing.assert_close(full(tokens), plain(tokens), rtol=0, atol=0)


def test_checkpointing_a_compiled_block_saves_what_checkpointing_an_eager_one_does():
    """trainer.compile compiles each block inside its checkpoint (parallel/compile.py): the
    checkpoint still drops everything the compiled graph saves but the block's inputs."""
    from triforge.parallel.activation_checkpoint import apply_ac, saved_activation_bytes
    from triforge.parallel.compile import apply_compile

    tokens = torch.randint(0, 320, (2, 32))
    saved = {}
    for compiled in (False, True):
        model = build_model(tiny(n_layers=2), vocab_size=320, attention_backend="sdpa")
        if compiled:
            apply_compile(model)
        apply_ac(model, mode="full", every=1)
        model = materialize(model, "cpu", seed=0)
        model(tokens).sum().backward()  # compiles, so that compilation's tensors do not count
        saved[compiled] = saved_activation_bytes(lambda: model(tokens).sum(),  # noqa: B023
                                                 exclude=list(model.parameters()))
    assert saved[True] == saved[False] > 0, saved
