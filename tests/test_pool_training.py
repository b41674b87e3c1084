"""Training on pool rows (`q [SEP] d_1 [CLS] ... d_k [CLS]`, a score at every CLS): one-pass
scoring equals the definition, the listwise loss is the hand-written softmax CE, trimming is
exact, training learns, a resume continues the same run, and 2-process DDP matches one process."""
from __future__ import annotations

import subprocess

import numpy as np
import orjson
import pytest
import torch
from trainer_helpers import (CLS, TORCHRUN, TRAIN_SCRIPT, adapter_weights, assert_same_adapter, ddp_args, lora_model,
                             read_metrics_rows, tiny_model, torchrun_env, toy_config, toy_dataset, toy_pool_dataset,
                             toy_pool_rows, write_pool_dataset)

from cross_encoder.training.data import collate, load_padded_dataset
from cross_encoder.training.losses import get_loss
from cross_encoder.training.trainer import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool_train")
    return tiny_model(d / "m.pth"), toy_pool_dataset(d / "ds", n_rows=24, n_docs=4, max_length=64)


def test_score_at_each_cls_equals_the_row_cut_right_after_it(assets):
    model_file, ds = assets
    rows = load_padded_dataset(ds, progress=False)
    pm = lora_model(model_file)
    idx = np.arange(6)
    b = collate(rows, idx)
    with torch.no_grad():
        one_pass = pm(input_ids=b["input_ids"], lengths=b["lengths"], score_rows=b["score_rows"],
                      score_pos=b["score_pos"])  # [S]
        pm.base_model.model.rwkv.wkv_impl = "reference"  # the oracle runs the step-by-step recurrence
        want = []
        for r, pos in zip(b["score_rows"].tolist(), b["score_pos"].tolist()):
            cut = torch.as_tensor(rows.row(int(idx[r]))[:pos + 1].astype(np.int64))[None]  # ends with CLS i
            assert int(cut[0, -1]) == CLS
            want.append(pm(input_ids=cut, lengths=torch.tensor([pos + 1]))[0])
        pm.base_model.model.rwkv.wkv_impl = "auto"
    assert one_pass.shape == (int(np.diff(rows.score_offsets)[idx].sum()),)
    torch.testing.assert_close(one_pass, torch.stack(want), atol=2e-5, rtol=1e-5)


def test_listwise_loss_is_the_softmax_cross_entropy_of_each_row():
    gen = torch.Generator().manual_seed(0)
    sizes, gold = [4, 2, 5, 3], [1, 0, 4, 2]
    scores = (3 * torch.randn(sum(sizes), generator=gen)).requires_grad_()  # float32 logits
    labels = torch.tensor([int(i == g) for n, g in zip(sizes, gold) for i in range(n)])
    groups = torch.tensor([r for r, n in enumerate(sizes) for _ in range(n)]) * 7 + 3  # any ids
    loss = get_loss("listwise")(scores, labels, groups)
    # By hand: -log(exp(s_gold) / sum_j exp(s_j)) per row, averaged over rows, in plain Python floats.
    s, at, per_row = scores.detach().tolist(), 0, []
    for n, g in zip(sizes, gold):
        row = s[at:at + n]
        m = max(row)
        per_row.append(-(row[g] - m - np.log(sum(np.exp(x - m) for x in row))))
        at += n
    assert float(loss.detach()) == pytest.approx(float(np.mean(per_row)), rel=1e-6)
    loss.backward()
    want, at = [], 0
    for n, g in zip(sizes, gold):  # d loss / d s_j = (softmax_j - [j == gold]) / rows
        e = np.exp(np.array(s[at:at + n]) - max(s[at:at + n]))
        want += ((e / e.sum() - np.eye(n)[g]) / len(sizes)).tolist()
        at += n
    np.testing.assert_allclose(scores.grad.numpy(), want, rtol=1e-5, atol=1e-7)
    # A row left with the gold alone has no ranking signal and does not count in the mean.
    one = get_loss("listwise")(torch.cat([scores.detach(), torch.tensor([5.0])]),
                               torch.cat([labels, torch.tensor([1])]), torch.cat([groups, torch.tensor([999])]))
    assert float(one) == pytest.approx(float(loss.detach()), rel=1e-7)


@pytest.mark.parametrize("loss_name", ["listwise", "bce"])
def test_trimmed_pool_batch_gives_identical_loss_and_grads(assets, loss_name):
    model_file, ds = assets
    rows = load_padded_dataset(ds, progress=False)
    pm = lora_model(model_file)
    idx = np.array([5, 0, 11, 3])
    results = []
    for width in (None, rows.max_length):
        b = collate(rows, idx, width)
        pm.zero_grad()
        scores = pm(**{k: b[k] for k in ("input_ids", "lengths", "score_rows", "score_pos")})
        loss = get_loss(loss_name)(scores, b["labels"], b["groups"])
        loss.backward()
        grads = [p.grad.clone() for p in pm.parameters() if p.requires_grad]
        results.append((b["input_ids"].shape[1], loss.detach(), grads))
    (t1, l1, g1), (t2, l2, g2) = results
    assert t1 < t2
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_listwise_training_learns_and_records_the_pool_format(assets, tmp_path):
    out = tmp_path / "out"
    summary = main(toy_config(assets, out, bs=4, epochs=4, lr=1e-2, eval_at_start=True, eval_every=6,
                              group_by_length=True))  # --loss auto: listwise on pool rows
    rows = read_metrics_rows(out)
    start, end = rows[0], rows[-1]
    assert end["eval_loss"] < 0.5 * start["eval_loss"] and end["eval_row_top1"] >= 0.8
    assert {"eval_row_mrr", "eval_pairwise_accuracy", "eval_roc_auc"} <= end.keys()
    assert end["eval_documents"] == 4 * end["eval_rows"] == 24
    train = [r["loss"] for r in rows if r["loss"] is not None]
    assert sum(train[-4:]) < 0.5 * sum(train[:4])
    ce = orjson.loads((out / "final" / "cross_encoder_config.json").read_bytes())
    assert ce["loss"] == "listwise" and ce["row_format"] == "pool" and ce["flags"]["loss"] == "listwise"
    assert ce["pool"]["pool_docs"] == 4 and ce["pool"]["documents_per_row"]["max"] == 4
    assert ce["dataset_fingerprint"]["row_format"] == "pool"
    card = (out / "final" / "README.md").read_text()
    assert "Pool rows" in card and "eval_row_mrr" in card
    assert summary["tokens_processed"] < 1.3 * summary["tokens_real"]  # trimmed, length-grouped
    # Gradient checkpointing changes nothing.
    main(toy_config(assets, tmp_path / "cp", bs=4, epochs=4, lr=1e-2, eval_every=6, group_by_length=True,
                    grad_cp=True, eval_at_start=True))
    assert_same_adapter(adapter_weights(out / "final"), adapter_weights(tmp_path / "cp" / "final"), atol=1e-5)


class Stop(Exception):
    pass


def test_interrupted_then_resumed_run_ends_with_the_uninterrupted_weights(assets, tmp_path):
    common = dict(max_steps=8, save_every=3, grad_accum=2, bs=3, loss="bce")  # bce per CLS, dropout on
    ref = tmp_path / "ref"
    main(toy_config(assets, ref, **common))
    out = tmp_path / "cut"

    def stop(step):
        if step == 5:
            raise Stop()

    with pytest.raises(Stop):
        main(toy_config(assets, out, lora_ckpt=str(out), **common), on_step=stop)
    assert (out / "checkpoint-3").is_dir() and not (out / "final").exists()
    summary = main(toy_config(assets, out, lora_ckpt=str(out), **common))
    assert summary["steps_run"] == 5
    assert_same_adapter(adapter_weights(ref / "final"), adapter_weights(out / "final"))
    assert [r["loss"] for r in read_metrics_rows(out)] == pytest.approx([r["loss"] for r in read_metrics_rows(ref)],
                                                                          rel=1e-5)


def test_losses_that_do_not_fit_the_row_format_are_refused(assets, tmp_path):
    for loss in ("grouped", "mse"):
        with pytest.raises(ValueError, match="listwise"):
            main(toy_config(assets, tmp_path / loss, loss=loss))
    passage = toy_dataset(tmp_path / "passage", n_groups=4, max_length=40)
    with pytest.raises(ValueError, match="grouped"):
        main(toy_config((assets[0], passage), tmp_path / "p", loss="listwise"))
    assert not (tmp_path / "grouped").exists() and not (tmp_path / "p").exists()


def test_pool_rows_that_contradict_padding_json_are_refused(tmp_path):
    good = toy_pool_rows(3, n_docs=3, seed=1)
    bad_cls = [(good[0][0], [good[0][1][0] - 1, *good[0][1][1:]], good[0][2]), *good[1:]]
    two_golds = [(good[0][0], good[0][1], [1, 1, 0]), *good[1:]]
    last_not_at_end = [(good[0][0] + [5], good[0][1], good[0][2]), *good[1:]]
    for name, rows, match in (("cls", bad_cls, "no CLS"), ("labels", two_golds, "exactly one 1"),
                              ("end", last_not_at_end, "length-1")):
        with pytest.raises(ValueError, match=match):
            load_padded_dataset(write_pool_dataset(tmp_path / name, rows, 40, n_shards=1), progress=False)


@pytest.mark.slow  # ~12-25 s: two fresh processes import torch and peft
def test_torchrun_two_process_gloo_on_pool_rows_matches_one_process(assets, tmp_path):
    model_file, ds = assets
    out = tmp_path / "ddp"
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(TRAIN_SCRIPT),
                           *ddp_args(model_file, ds, out, bs=2)], capture_output=True, text=True,
                          env=torchrun_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_metrics_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["eval_documents"] == 24
    single = tmp_path / "single"
    main(toy_config(assets, single, bs=4, lora_dropout=0.0, eval_every=2, max_steps=4, device="cpu"))
    weights = adapter_weights(out / "final")
    assert_same_adapter(weights, adapter_weights(single / "final"), atol=2e-5)
    bias = [v for k, v in weights.items() if k.endswith("score.bias")]
    assert len(bias) == 1 and float(bias[0].abs().max()) == 0.0  # listwise: the head's bias stays frozen
    for r, s in zip(rows, read_metrics_rows(single)):
        assert abs(r["loss"] - s["loss"]) < 1e-4 and abs(r.get("eval_loss", 0) - s.get("eval_loss", 0)) < 1e-4
