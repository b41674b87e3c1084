"""Random checkpoints: official layout, RWKV-LM v5 init structure, atomic writing, trainability."""
import pytest
import torch

from cross_encoder.rwkv5 import load_rwkv5, make_config, write_random_checkpoint
from cross_encoder.rwkv5.checkpoint import config_from_state_dict


def official_keys(n_layer, version):
    """The key set of an official RWKV-5 checkpoint, spelled out independently of the code under test."""
    keys = {"emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight"}
    att = ["time_mix_k", "time_mix_v", "time_mix_r", "time_decay", "time_faaaa", "receptance.weight", "key.weight",
           "value.weight", "output.weight", "ln_x.weight", "ln_x.bias"]
    if version != "5.0":
        att += ["time_mix_g", "gate.weight"]
    ffn = ["time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight"]
    for i in range(n_layer):
        keys |= {f"blocks.{i}.{ln}.{p}" for ln in ("ln1", "ln2") for p in ("weight", "bias")}
        keys |= {f"blocks.{i}.att.{k}" for k in att} | {f"blocks.{i}.ffn.{k}" for k in ffn}
    return keys


@pytest.mark.parametrize("version", ["5.0", "5.1", "5.2"])
def test_random_checkpoint_has_official_layout(tmp_path, version):
    path = tmp_path / "sub" / "m.pth"
    write_random_checkpoint(path, n_layer=3, n_embd=64, head_size=32, vocab_size=100, version=version, seed=1)
    assert [p.name for p in path.parent.iterdir()] == ["m.pth"]  # no temp file left behind
    sd = torch.load(path, weights_only=True)
    assert set(sd) == official_keys(3, version)
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert sd["emb.weight"].shape == (100, 64) and sd["head.weight"].shape == (100, 64)
    assert sd["blocks.0.ffn.key.weight"].shape == (224, 64)  # 3.5 x n_embd
    decay_shape = (2, 32) if version == "5.2" else (2,)
    assert sd["blocks.2.att.time_decay"].shape == decay_shape and sd["blocks.2.att.time_faaaa"].shape == decay_shape
    cfg = load_rwkv5(path).config
    assert (cfg.version, cfg.n_head, cfg.head_size, cfg.n_layer) == (version, 2, 32, 3)


def test_init_follows_rwkv_lm_v5_structure(tmp_path):
    write_random_checkpoint(tmp_path / "a.pth", n_layer=4, n_embd=64, head_size=16, vocab_size=50, seed=0,
                            dtype=torch.float32)
    sd = torch.load(tmp_path / "a.pth", weights_only=True)
    ddd = torch.arange(64) / 64
    # time-mix curves: (i / C) ** (1 - layer / n_layer)
    torch.testing.assert_close(sd["blocks.0.att.time_mix_k"].flatten(), ddd)
    torch.testing.assert_close(sd["blocks.2.ffn.time_mix_k"].flatten(), ddd ** 0.5)
    torch.testing.assert_close(sd["blocks.3.att.time_mix_r"].flatten(), ddd ** 0.125)
    # decay speeds spread over channels from -6 to -1, per layer
    for i in range(4):
        d = sd[f"blocks.{i}.att.time_decay"].flatten()
        assert d[0] == pytest.approx(-6) and d[-1] == pytest.approx(-1) and bool((d.diff() > 0).all())
    assert not torch.equal(sd["blocks.0.att.time_decay"], sd["blocks.3.att.time_decay"])
    # ln_x scaled by depth, tiny embeddings, orthogonal matrices
    assert sd["blocks.0.att.ln_x.weight"][0] == pytest.approx(0.25 ** 0.7)
    assert sd["blocks.3.att.ln_x.weight"][0] == pytest.approx(1.0)
    assert sd["emb.weight"].abs().max() <= 1e-4
    w = sd["blocks.1.att.key.weight"]
    torch.testing.assert_close(w @ w.T, torch.eye(64), atol=1e-5, rtol=0)
    # RWKV-LM zeroes these; by default they are small so that context matters
    assert 0 < sd["blocks.0.att.output.weight"].abs().max() < 0.5
    write_random_checkpoint(tmp_path / "b.pth", n_layer=4, n_embd=64, head_size=16, vocab_size=50, seed=0,
                            dtype=torch.float32, exact_rwkv_lm_init=True)
    exact = torch.load(tmp_path / "b.pth", weights_only=True)
    for name in ("att.output", "ffn.value", "ffn.receptance"):
        assert exact[f"blocks.1.{name}.weight"].abs().max() == 0


def test_seed_determines_weights(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_random_checkpoint(tmp_path / f"{name}.pth", n_layer=1, n_embd=32, head_size=16, vocab_size=20, seed=seed)
    a, b, c = (torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.att.key.weight"], c["blocks.0.att.key.weight"])


def test_random_model_uses_context(tmp_path):
    write_random_checkpoint(tmp_path / "m.pth", n_layer=2, n_embd=32, head_size=16, vocab_size=20, seed=0)
    model = load_rwkv5(tmp_path / "m.pth")
    with torch.no_grad():
        h = model.hidden(torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]))
    assert (h[0, -1] - h[1, -1]).abs().max() > 1e-3  # same last token, different history


def test_tiny_random_model_trains(tmp_path):
    torch.manual_seed(0)
    write_random_checkpoint(tmp_path / "m.pth", n_layer=2, n_embd=32, head_size=16, vocab_size=16, seed=0)
    model = load_rwkv5(tmp_path / "m.pth").train()
    # next token = previous token + 3 (mod 16): learnable only through the token shift / WKV state
    ids = (torch.arange(33)[None] * 3 + torch.arange(4)[:, None]) % 16
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.3 * losses[0], losses[::8]


def test_config_inferred_from_official_0_4b_shapes():
    """RWKV-5-World-0.4B-v2 key shapes (as meta tensors: nothing is allocated)."""
    shapes = {"emb.weight": (65536, 1024), "head.weight": (65536, 1024)}
    for i in range(24):
        p = f"blocks.{i}.att."
        shapes.update({p + "key.weight": (1024, 1024), p + "gate.weight": (1024, 1024), p + "ln_x.weight": (1024,),
                       p + "time_decay": (16, 64), p + "time_faaaa": (16, 64),
                       f"blocks.{i}.ffn.key.weight": (3584, 1024)})
    cfg = config_from_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    assert cfg == make_config(24, 1024, head_size=64, vocab_size=65536, version="5.2")
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size, cfg.dim_ffn, cfg.vocab_size) == (24, 1024, 16, 64, 3584, 65536)
