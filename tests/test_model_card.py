"""The README.md model card of every adapter folder: its YAML parses (PyYAML and huggingface_hub),
its metrics are the metrics.jsonl eval row of that step, and peft still loads and re-saves the folder."""
import math
import shutil

import orjson
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftModel
from trainer_helpers import adapter_weights, assert_same_adapter, read_metrics_rows, tiny_model, toy_config, toy_dataset

from cross_encoder.modeling import CrossEncoder
from cross_encoder.modeling.model_card import COUNT_KEYS, build_model_card, yaml_scalar
from cross_encoder.rwkv5 import load_rwkv5
from cross_encoder.training.trainer import main


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("card")
    assets = (tiny_model(work / "m.pth"), toy_dataset(work / "ds"))
    out = work / "out"
    main(toy_config(assets, out, max_steps=4, eval_every=2, save_every=1, save_total_limit=0, lora_dropout=0.0))
    return assets, out


def test_every_folder_has_a_card_whose_metrics_are_its_eval_row(run):
    (model_file, _), out = run
    rows = {r["step"]: r for r in read_metrics_rows(out) if "eval_loss" in r}
    assert sorted(rows) == [2, 4]
    for name, step in (("checkpoint-1", 1), ("checkpoint-2", 2), ("checkpoint-3", 3), ("checkpoint-4", 4),
                       ("final", 4)):
        text = (out / name / "README.md").read_text(encoding="utf-8")
        meta = front_matter(text)
        assert meta["library_name"] == "peft" and meta["base_model"] == model_file.name
        assert meta["tags"] == ["reranker", "cross-encoder", "rwkv", "rwkv5"]
        assert meta["pipeline_tag"] == "text-ranking" and meta["datasets"] == ["ds"]
        assert f"# RWKV-5 cross-encoder reranker (step {step})" in text
        assert "Reranker.from_pretrained" in text and "3_rerank.py" in text and "4_serve.py" in text
        ce = orjson.loads((out / name / "cross_encoder_config.json").read_bytes())
        if step not in rows:
            assert "model-index" not in meta and "metrics" not in meta and ce["eval_metrics"] is None
            assert f"was not evaluated at its step ({step})" in text
            continue
        row = rows[step]
        want = {k: v for k, v in row.items() if k.startswith("eval_") and k not in COUNT_KEYS}
        assert len(want) == 5
        (result,) = meta["model-index"][0]["results"]
        assert {m["type"]: m["value"] for m in result["metrics"]} == want  # exact: floats round-trip
        assert meta["metrics"] == list(want)
        assert f"({row['eval_rows']} rows, {row['eval_groups']} groups)" in result["dataset"]["name"]
        assert ce["eval_metrics"] == {k: v for k, v in row.items() if k.startswith("eval_")}
        # huggingface_hub reads the same numbers off the card (what the Hub shows).
        hub = ModelCard(text).data
        assert {e.metric_type: e.metric_value for e in hub.eval_results} == want
        for key in want:
            assert f"| {key} |" in text  # the eval table of this checkpoint


def test_peft_loads_the_folder_and_resaves_it_keeping_the_card(run, tmp_path):
    (model_file, _), out = run
    peft_model = PeftModel.from_pretrained(CrossEncoder(load_rwkv5(model_file, with_head=False)), str(out / "final"))
    copy = tmp_path / "final"
    shutil.copytree(out / "final", copy)
    # peft's save_pretrained into a folder with a card updates that card (huggingface_hub parses it).
    peft_model.save_pretrained(str(copy))
    assert_same_adapter(adapter_weights(copy), adapter_weights(out / "final"), atol=0)
    before = front_matter((out / "final" / "README.md").read_text(encoding="utf-8"))
    after = front_matter((copy / "README.md").read_text(encoding="utf-8"))
    assert after["library_name"] == "peft" and after["model-index"] == before["model-index"]
    assert "Reranker.from_pretrained" in (copy / "README.md").read_text(encoding="utf-8")
    again = PeftModel.from_pretrained(CrossEncoder(load_rwkv5(model_file, with_head=False)), str(copy))
    ids, lengths = torch.tensor([[11, 12, 2, 13, 14, 1]]), torch.tensor([6])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, lengths=lengths), peft_model(input_ids=ids, lengths=lengths))


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())


@settings(max_examples=200, deadline=None)
@given(scalars)
def test_yaml_scalar_round_trips_through_pyyaml(value):
    got = yaml.safe_load(f"key: {yaml_scalar(value)}")["key"]
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == value and type(got) is type(value)


def test_card_of_odd_values_still_parses():
    ce = {"step": 7, "base_model_file": 'we"ird: base\n.pth', "dataset": "/d/ds: 'x' | ü 😀\x85",
          "sep_token_id": 2, "cls_token_id": 1, "pad_token_id": 0, "flags": {"lr": 1e-05, "bs": 2, "grad_accum": 3}}
    metrics = {"eval_loss": 1e-05, "eval_roc_auc": float("nan"), "eval_rows": 4, "loss": 0.3}
    text = build_model_card(ce, metrics, {"world_size": 2})
    meta = front_matter(text)
    assert meta["base_model"] == ce["base_model_file"] and meta["datasets"] == ["ds: 'x' | ü 😀\x85"]
    (result,) = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"eval_loss": 1e-05}  # NaN is not a result
    assert "| eval_roc_auc | n/a |" in text and "| rows per optimizer step | 12 |" in text
    assert "| loss |" not in text  # the training loss is no eval metric
