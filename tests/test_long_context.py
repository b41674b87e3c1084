"""Long rows: gradient checkpointing is exact on a 2k-token row, the bf16 autocast path (the CUDA
default) runs on CPU close to fp32, the trainer completes on ~16k-token rows built by stages 1 and 2,
and a small configuration of bench/bench_long_context.py runs and writes its table and plot."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import orjson
import pytest
import torch
import zstandard
from trainer_helpers import REPO, TOY_VOCAB, tiny_model, toy_dataset

from cross_encoder.modeling import CrossEncoder, attach_lora, make_lora_config
from cross_encoder.runtime import Runtime
from cross_encoder.rwkv5 import load_rwkv5
from cross_encoder.training.config import DEFAULT_LORA_TARGETS, TrainConfig
from cross_encoder.training.losses import get_loss
from cross_encoder.training.trainer import main as train

BENCH = REPO / "bench" / "bench_long_context.py"


def lora_cross_encoder(path, dtype=torch.float32, dropout=0.1, seed=0):
    """What the trainer builds: the frozen trunk in `dtype`, the fp32 score head, LoRA on the defaults."""
    rwkv = load_rwkv5(path, dtype=dtype, with_head=False)
    torch.manual_seed(seed)
    model = attach_lora(CrossEncoder(rwkv, head_seed=seed),
                        make_lora_config(4, 8.0, dropout, list(DEFAULT_LORA_TARGETS)))
    # LoRA B starts at zero, which would leave the adapters out of the forward pass entirely.
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(i))
    model.train()
    return model


def rows(lengths, vocab, seed=0):
    """Right-padded random rows [B, max(lengths)] ending in CLS (1), labels alternating 1/0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n - 1] = torch.randint(10, vocab, (n - 1,), generator=g)
        ids[i, n - 1] = 1
    return ids, torch.tensor(lengths), torch.tensor([1 - i % 2 for i in range(len(lengths))]), torch.zeros(len(lengths), dtype=torch.long)


def loss_and_grads(model, batch, seed=123):
    ids, lengths, labels, groups = batch
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the LoRA dropout masks
    loss = get_loss("bce")(model(input_ids=ids, lengths=lengths).float(), labels, groups)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("segment_len", [None, 512])
def test_gradient_checkpointing_equals_plain_backward_on_a_2k_row(tmp_path, segment_len):
    model = lora_cross_encoder(tiny_model(tmp_path / "m.pth", n_layer=3))
    batch = rows([2048, 1531], TOY_VOCAB)
    rwkv = model.base_model.model.rwkv
    rwkv.segment_len = segment_len
    segments = 1 if segment_len is None else 2048 // segment_len
    calls = []
    for block in rwkv.blocks:
        block.register_forward_pre_hook(lambda *a: calls.append(1))  # pre: recomputation may stop early
    plain_loss, plain = loss_and_grads(model, batch)
    assert len(calls) == 3 * segments
    rwkv.gradient_checkpointing = True
    calls.clear()
    ckpt_loss, ckpt = loss_and_grads(model, batch)
    assert len(calls) == 6 * segments  # every block ran again in backward: checkpointing was really on
    assert ckpt_loss == plain_loss
    assert plain.keys() == ckpt.keys() and any("lora_A" in n for n in plain) and any("score" in n for n in plain)
    for name in plain:
        assert plain[name].abs().max() > 0, name
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-9, msg=name)


def test_cpu_segments_equal_one_pass_outputs_state_and_gradients(tmp_path):
    from cross_encoder.rwkv5.model import DEFAULT_CPU_SEGMENT_LEN

    rwkv = load_rwkv5(tiny_model(tmp_path / "m.pth", n_layer=2), with_head=False)
    assert rwkv.segment_len == DEFAULT_CPU_SEGMENT_LEN
    ids = rows([333, 200], TOY_VOCAB)[0]

    def run(segment_len):
        rwkv.segment_len = segment_len
        rwkv.zero_grad(set_to_none=True)
        h, state = rwkv.hidden(ids, return_state=True)
        (h.pow(2).mean() + sum(s.pow(2).mean() for layer in state for s in layer)).backward()
        return h.detach(), [s.detach() for layer in state for s in layer], [p.grad for p in rwkv.parameters()]

    h1, s1, g1 = run(None)  # one pass over all 333 tokens: the reference
    h2, s2, g2 = run(128)  # segments of 128, 128, 77
    torch.testing.assert_close(h2, h1, rtol=1e-6, atol=1e-6)
    for a, b in zip(s2 + g2, s1 + g1):
        assert b.abs().max() > 0 and (a - b).abs().max() <= 1e-5 * b.abs().max()  # float32 summation order
    with pytest.raises(ValueError, match="multiple of 64"):
        run(100)


# bf16 autocast: relative tolerance on the loss of a tiny random model. Measured 0.6 % (gradients:
# cosine >= 0.998 to fp32 for every LoRA and head tensor); bf16
# keeps 8 mantissa bits (0.4 % per rounding), and the WKV state stays fp32 (ops._float32_math).
BF16_LOSS_RTOL = 0.03


def test_bf16_autocast_path_runs_on_cpu_close_to_fp32(tmp_path):
    path = tiny_model(tmp_path / "m.pth", n_layer=2)
    batch = rows([700, 512, 333, 64], TOY_VOCAB, seed=1)
    fp32_loss, fp32_grads = loss_and_grads(lora_cross_encoder(path, dropout=0.0), batch)
    # The CUDA default (--precision auto on a GPU) is exactly this Runtime: trunk stored in bf16,
    # forward under torch.autocast(device.type, bf16); on CPU the same code runs with device "cpu".
    rt = Runtime(device=torch.device("cpu"), amp_dtype=torch.bfloat16, base_dtype=torch.bfloat16, precision="bf16")
    model = lora_cross_encoder(path, dtype=rt.base_dtype, dropout=0.0)
    seen = []
    model.base_model.model.rwkv.blocks[0].att.output.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype) and None)
    ids, lengths, labels, groups = batch
    model.zero_grad(set_to_none=True)
    with rt.autocast():
        scores = model(input_ids=ids, lengths=lengths)
    loss = get_loss("bce")(scores.float(), labels, groups)
    loss.backward()
    assert seen == [torch.bfloat16]  # the projections really ran in bf16
    assert math.isfinite(float(loss.detach()))
    assert abs(float(loss) - fp32_loss) <= BF16_LOSS_RTOL * abs(fp32_loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == fp32_grads.keys()
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        cos = torch.nn.functional.cosine_similarity(g.float().flatten(), fp32_grads[name].flatten(), dim=0)
        assert cos > 0.95, (name, float(cos))


def test_trainer_with_bf16_precision_on_cpu_matches_fp32_first_step(tmp_path):
    model, ds = tiny_model(tmp_path / "m.pth"), toy_dataset(tmp_path / "ds", n_groups=8, max_length=40)

    def run(precision):
        out = tmp_path / precision
        train(TrainConfig(model_file=str(model), ds_dir=str(ds), output_dir=str(out), ctx_len=64, bs=4,
                          max_steps=2, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_fraction=0.0, log_every=1,
                          save_every=0, seed=0, precision=precision, device="cpu"))
        config = orjson.loads((out / "config.json").read_bytes())
        return config, [orjson.loads(line) for line in (out / "metrics.jsonl").read_bytes().splitlines()]

    cfg32, m32 = run("fp32")
    cfg16, m16 = run("bf16")
    assert cfg16["resolved"]["precision"] == "bf16" and cfg32["resolved"]["precision"] == "fp32"
    assert len(m16) == 2 and all(math.isfinite(r["loss"]) for r in m16)
    # Step 1 sees the same batch and the same initial weights in both runs.
    assert abs(m16[0]["loss"] - m32[0]["loss"]) <= BF16_LOSS_RTOL * abs(m32[0]["loss"])


def long_text_rows(tmp_path, n_records=2, min_tokens=17_000):
    """~16k-token rows of real text through stages 1 and 2: documents are the bundled sample's long
    prompts, concatenated until they pass `min_tokens` World tokens; stage 2 truncates to 16384."""
    from long_ctx.stage1 import Stage1Config, main as stage1
    from long_ctx.stage2 import Stage2Config, main as stage2
    from long_ctx.world_tokenizer import get_tokenizer

    tok = get_tokenizer()
    with (REPO / "data" / "nq_sample.jsonl.zst").open("rb") as fh:
        lines = zstandard.ZstdDecompressor().stream_reader(fh).read().splitlines()[:40]
    prompts = [p for p in (orjson.loads(line).get("prompt") for line in lines) if isinstance(p, str) and p]

    def long_doc(start):
        parts, n, i = [], 0, start
        while n < min_tokens:
            parts.append(prompts[i % len(prompts)])
            n += len(tok.encode(parts[-1]))
            i += 1
        return "\n".join(parts), i

    records, at = [], 0
    for line in range(n_records):
        positive, at = long_doc(at)
        negative, at = long_doc(at)
        records.append({"question": f"which document is number {line}?", "answer": "", "long_answer": "",
                        "positive": positive, "negative": negative, "negatives": [negative], "gold_id": 1,
                        "negative_ids": [2], "num_documents": 2, "line_number": line})
    qpn = tmp_path / "qpn.jsonl"
    qpn.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    stage1(Stage1Config(input_file=str(qpn), output_dir=str(tmp_path / "ds"), num_proc=1, progress=False))
    out = tmp_path / "padded"
    stage2(Stage2Config(ds_dir=str(tmp_path / "ds"), max_length=16384, output_dir=str(out), progress=False))
    return out


def test_training_on_16k_token_rows_with_grad_cp_completes(tmp_path):
    ds = long_text_rows(tmp_path)
    meta = orjson.loads((ds / "padding.json").read_bytes())
    model = tiny_model(tmp_path / "m.pth", vocab_size=65536, n_layer=2, n_embd=64)
    t0 = time.perf_counter()
    summary = train(TrainConfig(model_file=str(model), ds_dir=str(ds), output_dir=str(tmp_path / "out"),
                                ctx_len=16384, bs=2, max_steps=1, lora_r=4, lora_alpha=8, eval_fraction=0.0,
                                log_every=1, save_every=0, seed=0, grad_cp=True, device="cpu"))
    rows = [orjson.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_bytes().splitlines()]
    assert meta["num_rows"] == 4
    # one step of 2 rows, each cut by stage 2 to exactly 16384 real tokens (nothing lost, nothing padded)
    assert summary["tokens_real"] == summary["tokens_processed"] == 2 * 16384
    assert len(rows) == 1 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert orjson.loads((tmp_path / "out" / "config.json").read_bytes())["grad_cp"] is True
    print(f"16k-row training: {summary['tokens_real'] / (time.perf_counter() - t0):.0f} real tokens/s")


def test_bench_long_context_small_configuration_writes_table_and_plot(tmp_path):
    out = tmp_path / "lc.md"
    res = subprocess.run([sys.executable, str(BENCH), "--lengths", "256,1024", "--shape", "2x64", "--reps", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"]({png.name})" in text
    cases = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[3].isdigit():
            cases[(cells[0], cells[2], int(cells[3]))] = float(cells[4])
    expect = {(m, p, T) for T in (256, 1024) for m, p in [("RWKV-5", "fwd"), ("RWKV-5", "fwd+bwd"),
                                                         ("RWKV-5", "fwd+bwd gc"), ("BERT", "fwd"), ("BERT", "fwd+bwd")]}
    assert set(cases) == expect and all(v > 0 for v in cases.values())
    # The ratio table is recomputed here from the per-case rates it was derived from.
    row = next(line for line in text.splitlines() if line.startswith("| 1024 |"))
    fwd_ratio = float(row.split("|")[2].strip().rstrip("x"))
    assert fwd_ratio == pytest.approx(cases[("RWKV-5", "fwd", 1024)] / cases[("BERT", "fwd", 1024)], rel=0.01, abs=0.006)
    assert "crossover" in text and "n/a" in text  # T = 8192 / 32768 targets are not judged on this run


def test_bench_skips_cases_over_budget_instead_of_crashing(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # also for the case process, which imports measure
    import bench_long_context as bench
    from measure import run_budgeted
    done = [{"model": "bert", "impl": "sdpa", "pass": "fwd", "T": 2048, "sec": 10.0, "peak_mib": 100.0},
            {"model": "bert", "impl": "sdpa", "pass": "fwd", "T": 8192, "sec": 160.0, "peak_mib": 400.0}]
    case = {"model": "bert", "impl": "sdpa", "pass": "fwd", "T": 32768}
    # 2048 -> 8192 took 16x: T^2, so 32768 needs 16 x 160 s per call
    assert "T^2.00" in bench.predicted_over_budget(done, case, 3000.0, 1e9)
    assert bench.predicted_over_budget(done, case, 6000.0, 1e9) is None
    assert "memory budget" in bench.predicted_over_budget(done, case, 1e9, 1000.0)  # 400 + 300 * 3 MiB
    assert bench.predicted_over_budget(done, {**case, "pass": "fwd+bwd"}, 1.0, 1.0) is None  # nothing to go on
    t0 = time.perf_counter()
    assert "time budget" in run_budgeted(1, time.sleep, (30,), time_budget_s=1.0)["skipped"]
    assert time.perf_counter() - t0 < 20


def test_relu_square_matches_autograd_of_the_plain_expression():
    from cross_encoder.rwkv5.model import relu_square

    k = torch.randn(3, 50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(relu_square, (k,))
    g = torch.randn(3, 50, 7, dtype=torch.float64)
    want = torch.autograd.grad((torch.relu(k) ** 2 * g).sum(), k)[0]
    torch.testing.assert_close(torch.autograd.grad((relu_square(k) * g).sum(), k)[0], want, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(relu_square(k.detach().clone()), torch.relu(k) ** 2, rtol=0, atol=0)
