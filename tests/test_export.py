"""cross_encoder/5_export.py: the merged .pth loads with the `rwkv` pip package and with load_rwkv5, and
merged trunk + exported score head score exactly what the adapter scores; dtype rules; a base
without LM head; the output-folder refusals.

Oracles: the `rwkv` pip package (ChatRWKV's own loader and forward, also for the score: its LM head
swapped for the score head), the unmerged peft model, and W + (alpha / r) B A computed here from
the adapter's safetensors.
"""
import runpy
import sys

import orjson
import pytest
import torch
import yaml
from eval_helpers import REPO, trained_adapter
from rwkv5_helpers import perturbed_checkpoint, pip_rwkv_class
from safetensors.torch import load_file

from cross_encoder.modeling.export import ExportConfig, main
from cross_encoder.modeling.loading import load_cross_encoder
from cross_encoder.rwkv5 import load_rwkv5
from cross_encoder.serving.reranker import Reranker
from long_ctx.common.cli import UsageError

SCRIPT = REPO / "cross_encoder" / "5_export.py"
VOCAB = 65536  # the toy rows use World ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(fp32 base with every tensor jittered, its adapter with strong LoRA, work folder)."""
    work = tmp_path_factory.mktemp("export")
    base = perturbed_checkpoint(work / "base.pth", vocab_size=VOCAB, strong_decay=True)
    return base, trained_adapter(work, base), work


@pytest.fixture(scope="module")
def exported(trained):
    base, adapter, work = trained
    main(ExportConfig(model_file=str(base), adapter=str(adapter.parent), output_dir=str(work / "exp")))
    return work / "exp"


def rows():
    g = torch.Generator().manual_seed(5)
    q = torch.randint(10, 60000, (6,), generator=g).tolist()
    docs = [torch.randint(10, 60000, (int(n),), generator=g).tolist() for n in (3, 9, 17, 30)]
    return q, docs


def test_export_files_keys_and_lm_head(trained, exported):
    base, adapter, _ = trained
    src = torch.load(base, weights_only=True)
    out = torch.load(exported / "model.pth", weights_only=True)
    assert out.keys() == src.keys()  # the official layout, head.weight included
    assert torch.equal(out["head.weight"], src["head.weight"])
    targets = (".att.receptance.", ".att.key.", ".att.value.", ".ffn.receptance.", ".ffn.key.", ".ffn.value.")
    changed = {k for k in src if not torch.equal(out[k], src[k])}
    assert changed == {k for k in src if k.startswith("blocks.") and any(t in k for t in targets)}
    assert all(v.dtype == torch.float32 for v in out.values())
    head = load_file(str(exported / "score_head.safetensors"))
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    assert torch.equal(head["weight"], ad["base_model.model.score.weight"])
    assert torch.equal(head["bias"], ad["base_model.model.score.bias"])
    cfg = orjson.loads((exported / "cross_encoder_config.json").read_bytes())
    want = orjson.loads((adapter / "cross_encoder_config.json").read_bytes())
    assert {k: v for k, v in cfg.items() if k != "export"} == want
    assert cfg["export"]["lm_head"] is True and cfg["export"]["dtype"] == "fp32"
    card = (exported / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "base.pth" and "merged" in meta["tags"] and "library_name" not in meta


def test_merged_weights_equal_w_plus_scaled_ba(trained, exported):
    base, adapter, _ = trained
    src = torch.load(base, weights_only=True)
    out = torch.load(exported / "model.pth", weights_only=True)
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    lc = orjson.loads((adapter / "adapter_config.json").read_bytes())
    scale = lc["lora_alpha"] / lc["r"]
    n = 0
    for k in src:
        a = ad.get(f"base_model.model.rwkv.{k[:-len('.weight')]}.lora_A.weight")
        if a is None:
            continue
        b = ad[f"base_model.model.rwkv.{k[:-len('.weight')]}.lora_B.weight"]
        torch.testing.assert_close(out[k], src[k].float() + scale * (b @ a), rtol=1e-6, atol=1e-6, msg=k)
        n += 1
    assert n == 12  # 6 projections x 2 layers


def test_exported_pth_loads_in_pip_rwkv_with_same_logits(exported, monkeypatch):
    RWKV = pip_rwkv_class(monkeypatch)
    ours = load_rwkv5(exported / "model.pth")
    pip_model = RWKV(str(exported / "model.pth"), strategy="cpu fp32", verbose=False)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(2))
    want, _ = pip_model.forward(ids.tolist(), None, full_output=True)
    with torch.no_grad():
        got = ours(ids[None])[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_merged_trunk_plus_score_head_scores_equal_the_adapter(trained, exported, monkeypatch, tmp_path):
    base, adapter, _ = trained
    q, docs = rows()
    cfg = orjson.loads((exported / "cross_encoder_config.json").read_bytes())
    sep, cls = cfg["sep_token_id"], cfg["cls_token_id"]
    want = Reranker.from_pretrained(base, adapter).score_ids(q, docs)
    peft_model, _ = load_cross_encoder(base, adapter, merge=False)  # LoRA applied on the fly, not merged
    unmerged = Reranker(peft_model, cfg).score_ids(q, docs)
    torch.testing.assert_close(torch.as_tensor(unmerged), torch.as_tensor(want), rtol=1e-5, atol=1e-5)

    head = load_file(str(exported / "score_head.safetensors"))
    trunk = load_rwkv5(exported / "model.pth", with_head=False)
    with torch.no_grad():
        by_hand = [float(trunk.hidden(torch.tensor([q + [sep] + d + [cls]]))[0, -1] @ head["weight"][0]
                         + head["bias"][0]) for d in docs]
    torch.testing.assert_close(torch.tensor(by_hand), torch.as_tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-5)

    # docs/export.md: a logits-only runtime gives the score with the score head as its LM head.
    sd = torch.load(exported / "model.pth", weights_only=True)
    sd["head.weight"] = head["weight"].to(sd["head.weight"].dtype)
    torch.save(sd, tmp_path / "scorer.pth")
    pip_model = pip_rwkv_class(monkeypatch)(str(tmp_path / "scorer.pth"), strategy="cpu fp32", verbose=False)
    pip_scores = [float(pip_model.forward(q + [sep] + d + [cls], None)[0][0] + head["bias"][0]) for d in docs]
    torch.testing.assert_close(torch.tensor(pip_scores), torch.tensor(by_hand), rtol=1e-4, atol=1e-4)

    # The adapter matters: the bare base with the trained head scores clearly otherwise.
    bare = load_rwkv5(base, with_head=False)
    with torch.no_grad():
        no_lora = [float(bare.hidden(torch.tensor([q + [sep] + d + [cls]]))[0, -1] @ head["weight"][0]
                         + head["bias"][0]) for d in docs]
    assert max(abs(a - b) for a, b in zip(no_lora, by_hand)) > 1e-2


def test_dtype_rules(trained, exported, tmp_path):
    base, adapter, _ = trained
    src = torch.load(base, weights_only=True)
    merged32 = torch.load(exported / "model.pth", weights_only=True)
    # A bf16 base (the official files) exports bf16: the float32 merge rounded once.
    bf16_base = tmp_path / "base_bf16.pth"
    torch.save({k: v.bfloat16() for k, v in src.items()}, bf16_base)
    main(ExportConfig(model_file=str(bf16_base), adapter=str(adapter), output_dir=str(tmp_path / "bf16")))
    got = torch.load(tmp_path / "bf16" / "model.pth", weights_only=True)
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    lc = orjson.loads((adapter / "adapter_config.json").read_bytes())
    k = "blocks.1.att.key.weight"
    a, b = ad[f"base_model.model.rwkv.{k[:-7]}.lora_A.weight"], ad[f"base_model.model.rwkv.{k[:-7]}.lora_B.weight"]
    oracle = (src[k].bfloat16().float() + lc["lora_alpha"] / lc["r"] * (b @ a)).bfloat16()
    assert got[k].dtype == torch.bfloat16
    torch.testing.assert_close(got[k].float(), oracle.float(), rtol=0, atol=0)
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    # --dtype decides every tensor.
    main(ExportConfig(model_file=str(base), adapter=str(adapter), output_dir=str(tmp_path / "fp16"), dtype="fp16"))
    got = torch.load(tmp_path / "fp16" / "model.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in got.values())
    assert all(torch.equal(got[k], merged32[k].half()) for k in got)
    # A base mixing dtypes keeps each tensor's.
    mixed = {k: (v if "time_" in k else v.bfloat16()) for k, v in src.items()}
    torch.save(mixed, tmp_path / "mixed.pth")
    main(ExportConfig(model_file=str(tmp_path / "mixed.pth"), adapter=str(adapter), output_dir=str(tmp_path / "mx")))
    got = torch.load(tmp_path / "mx" / "model.pth", weights_only=True)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in mixed.items()}
    with pytest.raises(ValueError, match="--dtype"):
        main(ExportConfig(model_file=str(base), adapter=str(adapter), output_dir=str(tmp_path / "x"), dtype="int8"))


def test_base_without_lm_head(trained, exported, tmp_path, capsys):
    base, adapter, _ = trained
    src = torch.load(base, weights_only=True)
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in src.items() if k != "head.weight"}, headless)
    main(ExportConfig(model_file=str(headless), adapter=str(adapter), output_dir=str(tmp_path / "exp")))
    assert "not byte for byte the base file" in capsys.readouterr().err  # another file, same weights
    got = torch.load(tmp_path / "exp" / "model.pth", weights_only=True)
    with_head = torch.load(exported / "model.pth", weights_only=True)
    assert "head.weight" not in got and got.keys() == with_head.keys() - {"head.weight"}
    assert all(torch.equal(got[k], with_head[k]) for k in got)
    trunk = load_rwkv5(tmp_path / "exp" / "model.pth", with_head=False)
    assert trunk.head is None
    cfg = orjson.loads((tmp_path / "exp" / "cross_encoder_config.json").read_bytes())
    assert cfg["export"]["lm_head"] is False


def test_output_folder_refusals(trained, tmp_path):
    base, adapter, _ = trained
    run = lambda out, *extra: main(ExportConfig(model_file=str(base), adapter=str(adapter), output_dir=str(out),  # noqa: E731
                                                overwrite="--overwrite" in extra))
    for out, msg in ((adapter, "is the input"), (adapter.parent, "contains the input"),
                     (base.parent, "contains the input")):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(UsageError, match=msg):
            run(out, "--overwrite")
        assert sorted(p.name for p in out.iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="never replaced"):
        run(mine, "--overwrite")
    assert (mine / "notes.txt").read_text() == "keep me"
    earlier = tmp_path / "earlier"
    run(earlier)
    stamp = (earlier / "model.pth").stat().st_mtime_ns
    with pytest.raises(UsageError, match="--overwrite"):
        run(earlier)
    assert (earlier / "model.pth").stat().st_mtime_ns == stamp
    (earlier / "model.pth").write_bytes(b"old")
    run(earlier, "--overwrite")
    assert load_rwkv5(earlier / "model.pth", with_head=False) is not None
    assert sorted(p.name for p in earlier.iterdir()) == ["README.md", "cross_encoder_config.json", "model.pth",
                                                          "score_head.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_one_line_errors_and_success(trained, tmp_path, monkeypatch, capsys):
    base, adapter, _ = trained

    def cli(*args):
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
        runpy.run_path(str(SCRIPT), run_name="__main__")

    with pytest.raises(SystemExit, match=r"^error: --adapter .* not found"):
        cli("--model_file", base, "--adapter", tmp_path / "nope", "--output_dir", tmp_path / "e")
    assert not (tmp_path / "e").exists()
    cli("--model_file", base, "--adapter", adapter.parent, "--output_dir", tmp_path / "e")
    with pytest.raises(SystemExit, match="pass --overwrite"):
        cli("--model_file", base, "--adapter", adapter.parent, "--output_dir", tmp_path / "e", "--dtype", "bf16")
    cli("--model_file", base, "--adapter", adapter.parent, "--output_dir", tmp_path / "e", "--dtype", "bf16",
        "--overwrite")
    assert "LM head kept" in capsys.readouterr().out
    assert {v.dtype for v in torch.load(tmp_path / "e" / "model.pth", weights_only=True).values()} == {torch.bfloat16}
