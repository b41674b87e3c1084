"""RWKV-5 model: logits against ChatRWKV's `rwkv` pip package, state reuse, save/load, checkpointing."""
import pytest
import torch
from rwkv5_helpers import perturbed_checkpoint, pip_rwkv_class

from cross_encoder.rwkv5 import RWKV5Config, expand_state, load_rwkv5, save_rwkv5, write_random_checkpoint
from cross_encoder.rwkv5.checkpoint import config_from_state_dict

VOCAB = 300


def pip_logits(pip_model, ids):
    """Logits [T, V] from the pip package's own sequence mode (T > 1) or single-token mode (T == 1)."""
    logits, _ = pip_model.forward(ids.tolist(), None, full_output=True)
    return logits if logits.dim() == 2 else logits[None]


@pytest.mark.parametrize("version,bonus_key", [("5.0", "time_faaaa"), ("5.0", "time_first"),
                                               ("5.1", "time_faaaa"), ("5.2", "time_faaaa")])
def test_logits_match_pip_package(tmp_path, monkeypatch, version, bonus_key):
    RWKV = pip_rwkv_class(monkeypatch)
    path = perturbed_checkpoint(tmp_path / "m.pth", version=version, strong_decay=True, bonus_key=bonus_key,
                                vocab_size=VOCAB)
    model = load_rwkv5(path)
    assert model.config.version == version and model.config.bonus_key == bonus_key
    pip_model = RWKV(str(path), strategy="cpu fp32", verbose=False)
    g = torch.Generator().manual_seed(0)
    for T in (1, 7, 70):  # single-token mode, short, longer than one chunk
        ids = torch.randint(0, VOCAB, (T,), generator=g)
        want = pip_logits(pip_model, ids)
        with torch.no_grad():
            got = model(ids[None])[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_pip_reference_and_random_init_head_size_64(tmp_path, monkeypatch):
    """Unperturbed RWKV-LM-style init, head size 64, bf16 file loaded as fp32 (the official file format)."""
    RWKV = pip_rwkv_class(monkeypatch)
    path = tmp_path / "m.pth"
    write_random_checkpoint(path, n_layer=2, n_embd=128, head_size=64, vocab_size=VOCAB, seed=3)
    model = load_rwkv5(path)
    # The pip package layer-norms a bf16 embedding in bf16; give it the same values as float32 so
    # that both sides compute in float32.
    fp32_path = tmp_path / "m32.pth"
    torch.save({k: v.float() for k, v in torch.load(path, weights_only=True).items()}, fp32_path)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids[None])[0]
        model.wkv_impl = "reference"
        got_ref = model(ids[None])[0]
    want = pip_logits(RWKV(str(fp32_path), strategy="cpu fp32", verbose=False), ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_ref, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = perturbed_checkpoint(tmp_path_factory.mktemp("m") / "m.pth", strong_decay=True, vocab_size=VOCAB)
    return load_rwkv5(path)


def test_prefix_state_reuse_equals_full_sequence(model):
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, VOCAB, (1, 23), generator=g)
    docs = torch.randint(0, VOCAB, (3, 41), generator=g)
    with torch.no_grad():
        _, state = model.hidden(prefix, return_state=True)
        expanded = expand_state(state, 3)
        got = model.hidden(docs, state=expanded)
        want = model.hidden(torch.cat([prefix.expand(3, -1), docs], 1))[:, prefix.shape[1]:]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the copies are independent: running from them never changes the batch-1 state
        for layer, orig in zip(expanded, state):
            for a, b in zip(layer, orig):
                assert a.data_ptr() != b.data_ptr()
        again = model.hidden(docs[:1], state=state)
        torch.testing.assert_close(again, got[:1], rtol=1e-5, atol=1e-5)


def test_continuing_returned_state_equals_one_pass(model):
    ids = torch.randint(0, VOCAB, (2, 90), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, full_state = model.hidden(ids, return_state=True)
        a, s = model.hidden(ids[:, :1], return_state=True)
        b, s = model.hidden(ids[:, 1:65], state=s, return_state=True)
        c, s = model.hidden(ids[:, 65:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, rtol=1e-5, atol=1e-5)
    for got, want in zip(s, full_state):
        for x, y in zip(got, want):  # WKV states are sums over 90 tokens: float32 rounding ~1e-5 of their scale
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * y.abs().max().item())


def test_right_padding_leaves_real_positions_unchanged(model):
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(1, VOCAB, (1, 30), generator=g)
    padded = torch.cat([ids, torch.zeros(1, 50, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model.hidden(padded)[:, :30], model.hidden(ids), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path, model):
    save_rwkv5(model, tmp_path / "copy.pth")
    sd = torch.load(tmp_path / "copy.pth", weights_only=True)
    assert set(sd) == set(model.state_dict())
    again = load_rwkv5(tmp_path / "copy.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


def test_load_without_head_and_in_bf16(tmp_path, model):
    path = tmp_path / "copy.pth"
    save_rwkv5(model, path)
    headless = load_rwkv5(path, with_head=False)
    assert headless.head is None and "head.weight" not in headless.state_dict()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(headless.hidden(ids), model.hidden(ids), rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="with_head"):
            headless(ids)
        half = load_rwkv5(path, dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in half.parameters())
        h = half.hidden(ids)
        assert h.dtype == torch.bfloat16
        want = model.hidden(ids)
        assert (h.float() - want).norm() < 0.1 * want.norm()  # bf16 weights: ~1 % relative error


def test_gradient_checkpointing_gives_identical_grads(model):
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(7))
    grads = []
    model.train()
    try:
        for flag in (False, True):
            model.gradient_checkpointing = flag
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    finally:
        model.gradient_checkpointing = False
        model.eval()
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}: {m}")
    assert any(g.abs().sum() > 0 for n, g in grads[0].items() if "time_decay" in n)


def test_official_names_and_config_inference(model):
    sd = model.state_dict()
    assert config_from_state_dict(sd) == model.config
    for i in range(model.config.n_layer):
        att = model.blocks[i].att
        for name in ("receptance", "key", "value", "gate", "output"):
            layer = getattr(att, name)
            assert type(layer) is torch.nn.Linear and layer.bias is None
        assert isinstance(att.ln_x, torch.nn.GroupNorm)
        for name in ("key", "receptance", "value"):
            assert type(getattr(model.blocks[i].ffn, name)) is torch.nn.Linear
    assert isinstance(model.emb, torch.nn.Embedding) and isinstance(model.head, torch.nn.Linear)
    assert sd["blocks.0.att.time_decay"].shape == (4, 16) and sd["blocks.0.att.time_mix_k"].shape == (1, 1, 64)
    assert "blocks.1.ln0.weight" not in sd and "blocks.0.ln0.weight" in sd


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_rwkv5(tmp_path / "missing.pth")
    path = tmp_path / "v6.pth"
    torch.save({"emb.weight": torch.zeros(4, 8), "blocks.0.att.key.weight": torch.zeros(8, 8),
                "blocks.0.att.time_maa_x": torch.zeros(1, 1, 8)}, path)
    with pytest.raises(ValueError, match="RWKV-6/7"):
        load_rwkv5(path)
    with pytest.raises(ValueError, match="head_size"):
        RWKV5Config(n_layer=1, n_embd=64, n_head=3, head_size=16, dim_att=64, dim_ffn=224, vocab_size=10)


def test_peft_lora_targets_official_names(model):
    peft = pytest.importorskip("peft")
    import copy

    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["receptance", "key", "value", "gate", "output"]))
    wrapped = [n for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert any(n.endswith("blocks.1.att.gate") for n in wrapped)
    assert any(n.endswith("blocks.0.ffn.value") for n in wrapped)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(10))
    lora.base_model.model.hidden(ids).sum().backward()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.gpu
def test_cuda_bf16_model_matches_cpu_fp32_and_trains(tmp_path):
    path = perturbed_checkpoint(tmp_path / "m.pth", n_embd=128, head_size=64, vocab_size=VOCAB)
    cpu = load_rwkv5(path)
    gpu = load_rwkv5(path, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 150), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = cpu.hidden(ids)
        got = gpu.hidden(ids.cuda()).float().cpu()  # 'auto': the fused kernel when fla is installed
        gpu.wkv_impl = "chunked"
        got_chunked = gpu.hidden(ids.cuda()).float().cpu()
    assert (got - want).norm() < 0.1 * want.norm()
    assert (got_chunked - want).norm() < 0.1 * want.norm()
    gpu.wkv_impl = "auto"
    gpu.train()
    gpu.gradient_checkpointing = True
    gpu.hidden(ids.cuda()).float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
