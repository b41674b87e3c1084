"""The scorer: trimming exactness, peft save/load (head included), frozen trunk, LoRA targets."""
import numpy as np
import pytest
import torch
from trainer_helpers import SEP, lora_model, tiny_model, toy_dataset

from cross_encoder.modeling import CrossEncoder, load_cross_encoder
from cross_encoder.rwkv5 import expand_state, load_rwkv5
from cross_encoder.training.outputs.checkpoints import save_checkpoint
from cross_encoder.training.data import collate, load_padded_dataset
from cross_encoder.training.losses import LOSSES, get_loss


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    return tiny_model(d / "m.pth"), toy_dataset(d / "ds", n_groups=8, max_length=48)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_trimmed_batch_gives_identical_loss_and_grads(assets, loss_name):
    model_file, ds = assets
    rows = load_padded_dataset(ds, progress=False)
    pm = lora_model(model_file)
    idx = np.arange(rows.n_rows)
    results = []
    for width in (None, rows.max_length):
        b = collate(rows, idx, width)
        pm.zero_grad()
        scores = pm(input_ids=b["input_ids"], lengths=b["lengths"])
        loss = get_loss(loss_name)(scores, b["labels"], b["groups"])
        loss.backward()
        grads = [p.grad.clone() for p in pm.parameters() if p.requires_grad]
        results.append((b["input_ids"].shape[1], scores.detach(), loss.detach(), grads))
    (t1, s1, l1, g1), (t2, s2, l2, g2) = results
    assert t1 < t2  # the trimmed batch really is narrower
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_only_lora_and_head_train(assets):
    pm = lora_model(assets[0])
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score.modules_to_save" in n for n in trainable)
    assert any("score.modules_to_save" in n for n in trainable)
    # Every default target got LoRA in every block, and nothing else did.
    lora_mods = {n.split(".lora_")[0].split("rwkv.")[1] for n in trainable if "lora_" in n}
    assert lora_mods == {f"blocks.{i}.{k}" for i in range(2) for k in
                         ("att.receptance", "att.key", "att.value", "ffn.receptance", "ffn.key", "ffn.value")}


def test_custom_and_invalid_targets(assets):
    pm = lora_model(assets[0], targets=("att.gate", "att.output"))
    names = {n for n, p in pm.named_parameters() if p.requires_grad and "lora_A" in n}
    assert any(".att.gate." in n for n in names) and any(".att.output." in n for n in names)
    assert not any(".att.key." in n for n in names)
    with pytest.raises(ValueError, match="att.receptance"):
        lora_model(assets[0], targets=("att.nonexistent",))


@pytest.mark.parametrize("merge", [True, False])
def test_save_load_round_trip_restores_head_and_lora(assets, tmp_path, merge):
    model_file, ds = assets
    rows = load_padded_dataset(ds, progress=False)
    b = collate(rows, np.arange(rows.n_rows))
    pm = lora_model(model_file, seed=1)
    with torch.no_grad():
        want = pm(input_ids=b["input_ids"], lengths=b["lengths"])
    trained_head = pm.base_model.model.score.modules_to_save["default"].weight.detach().clone()
    ce_cfg = {"step": 3, "sep_token_id": 2, "cls_token_id": 1, "pad_token_id": 0, "max_length": 48,
              "model": {"n_layer": 2, "n_embd": 64, "head_size": 16}}
    save_checkpoint(tmp_path / "ckpt", pm, ce_cfg, {"step": 3})
    torch.manual_seed(123)  # a different fresh head init than the saved one
    model, cfg = load_cross_encoder(model_file, tmp_path / "ckpt", merge=merge)
    assert cfg["cls_token_id"] == 1 and cfg["max_length"] == 48
    got = model.score_rows(b["input_ids"], b["lengths"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    head = model.score.weight if merge else model.base_model.model.score.modules_to_save["default"].weight
    assert torch.equal(head.detach(), trained_head)
    # The head a fresh model would have is different, so the equality above is not vacuous.
    fresh = CrossEncoder(load_rwkv5(str(model_file), with_head=False), head_seed=99)
    assert not torch.equal(fresh.score.weight, trained_head)


def test_wrong_base_model_is_refused(assets, tmp_path):
    pm = lora_model(assets[0])
    save_checkpoint(tmp_path / "ckpt", pm, {"step": 0, "model": {"n_layer": 2, "n_embd": 64}}, {})
    other = tiny_model(tmp_path / "other.pth", n_layer=3)
    with pytest.raises(ValueError, match="n_layer"):
        load_cross_encoder(other, tmp_path / "ckpt")


def test_state_reuse_api_matches_score_rows(assets):
    """The path the evaluator takes: question+[SEP] once, then documents from a copied state."""
    pm = lora_model(assets[0]).merge_and_unload()
    q = torch.tensor([[11, 12, 13, SEP]])
    docs = [[20, 21, 22, 1], [30, 1], [40, 41, 42, 43, 44, 1]]
    L = max(map(len, docs))
    d_ids = torch.tensor([d + [0] * (L - len(d)) for d in docs])
    d_len = torch.tensor([len(d) for d in docs])
    with torch.no_grad():
        _, state = pm.rwkv.hidden(q, return_state=True)
        h = pm.rwkv.hidden(d_ids, state=expand_state(state, len(docs)))
        reuse = pm.score_hidden(pm.pool(h, d_len))
    full = [q[0].tolist() + d for d in docs]
    W = max(map(len, full))
    ids = torch.tensor([f + [0] * (W - len(f)) for f in full])
    direct = pm.score_rows(ids, torch.tensor([len(f) for f in full]))
    torch.testing.assert_close(reuse, direct, atol=1e-5, rtol=1e-5)
