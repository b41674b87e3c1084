"""The model card (`README.md`) of every adapter folder the trainer writes and of an export.

Hugging Face convention: YAML front matter (`library_name`, `base_model`, `tags`, `pipeline_tag`,
`datasets`, `metrics`, and the eval results as `model-index`), then markdown: what the model is,
the training data and settings, the row format and special ids, the eval metrics of this very
checkpoint, and how to use it.

`build_model_card` is a pure function of the folder's `cross_encoder_config.json`, the eval
metrics of its step and the run settings; `write_model_card` writes it atomically. The YAML is
emitted by hand (no YAML library at run time) in the subset that YAML 1.1 (PyYAML, what peft
and huggingface_hub parse cards with) and YAML 1.2 read alike: double-quoted strings with every
character outside printable ASCII escaped, floats that always carry a dot.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping

from long_ctx.common.atomic import atomic_file
from long_ctx.common.dataset_card import markdown_table

CARD_NAME = "README.md"
TAGS = ("reranker", "cross-encoder", "rwkv", "rwkv5")
PIPELINE_TAG = "text-ranking"
#: Eval keys that count the held-out set rather than measure the model: in the text, not in `metrics`.
COUNT_KEYS = ("eval_rows", "eval_groups", "eval_documents", "eval_pools")
#: Training settings shown in the card, in this order: (flag, label).
SETTINGS = (("loss", "loss"), ("lr", "peak learning rate"), ("warmup_steps", "warmup steps"),
            ("min_lr_ratio", "cosine floor (x lr)"), ("bs", "rows per micro-batch per process"),
            ("grad_accum", "micro-batches per step"), ("epochs", "epochs"), ("max_steps", "max steps"),
            ("weight_decay", "weight decay"), ("max_grad_norm", "gradient clipping"),
            ("group_by_length", "length-grouped batches"), ("precision", "precision flag"),
            ("eval_fraction", "held-out fraction of groups"), ("seed", "seed"))


# ------------------------------------------------------------------------------------ YAML
def _yaml_string(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def yaml_scalar(v: Any) -> str:
    """One YAML scalar that PyYAML and YAML 1.2 parsers read back as `v` (str, bool, int, float, None)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            return ".nan"
        if math.isinf(f):
            return ".inf" if f > 0 else "-.inf"
        r = repr(f)
        # YAML 1.1 reads 1e-05 (no dot) as a string; repr already gives the exponent its sign.
        mantissa, e, exponent = r.partition("e")
        return (mantissa if "." in mantissa else mantissa + ".0") + (e + exponent if e else "")
    return _yaml_string(str(v))


def _finite_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def front_matter(ce_config: Mapping[str, Any], metrics: Mapping[str, Any] | None, library: str | None,
                 extra_tags: Iterable[str] = ()) -> str:
    """The YAML header between `---` lines."""
    lines = ["---"]
    if library:
        lines.append(f"library_name: {library}")
    lines.append(f"base_model: {yaml_scalar(ce_config.get('base_model_file') or 'unknown')}")
    lines.append("tags:")
    lines += [f"- {yaml_scalar(t)}" for t in (*TAGS, *extra_tags)]
    lines.append(f"pipeline_tag: {PIPELINE_TAG}")
    dataset = _dataset_name(ce_config)
    lines += ["datasets:", f"- {yaml_scalar(dataset)}"]
    counts = ", ".join(f"{(metrics or {})[k]} {k.removeprefix('eval_')}" for k in COUNT_KEYS if k in (metrics or {}))
    shown = {k: v for k, v in (metrics or {}).items() if k not in COUNT_KEYS and _finite_number(v)}
    if shown:
        lines.append("metrics:")
        lines += [f"- {yaml_scalar(k)}" for k in shown]
        lines += ["model-index:", f"- name: {yaml_scalar(_title(ce_config))}", "  results:",
                  "  - task:", f"      type: {PIPELINE_TAG}", "      name: Reranking",
                  "    dataset:", f"      name: {yaml_scalar(f'held-out groups of {dataset}' + (f' ({counts})' if counts else ''))}",
                  f"      type: {yaml_scalar(dataset)}", "      split: eval", "    metrics:"]
        for k, v in shown.items():
            lines += [f"    - type: {yaml_scalar(k)}", f"      value: {yaml_scalar(v)}",
                      f"      name: {yaml_scalar(k.removeprefix('eval_').replace('_', ' '))}"]
    lines.append("---")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- markdown
def _dataset_name(ce_config: Mapping[str, Any]) -> str:
    ds = ce_config.get("dataset") or "unknown"
    return Path(str(ds)).name or str(ds)


def _title(ce_config: Mapping[str, Any]) -> str:
    return f"rwkv5-cross-encoder-step-{ce_config.get('step', 'unknown')}"


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (list, tuple)):
        v = " ".join(map(str, v))
    # A `|` would end the cell; backticks keep paths readable.
    return str(v).replace("|", "\\|")


def _table(header: tuple[str, str], rows: Iterable[tuple[str, Any]]) -> str:
    return markdown_table(header, [(k, _cell(v)) for k, v in rows])


def _model_section(ce_config: Mapping[str, Any]) -> str:
    m = ce_config.get("model") or {}
    lora = ce_config.get("lora") or {}
    shape = ", ".join(f"{k} {m[k]}" for k in ("version", "n_layer", "n_embd", "n_head", "head_size", "vocab_size")
                      if k in m)
    return (f"RWKV-5 ({shape or 'shape not recorded'}) without its LM head, plus a score head "
            f"`Linear(n_embd, 1)` read at each row's CLS token. LoRA (r {lora.get('r', '?')}, alpha "
            f"{lora.get('alpha', '?')}, dropout {lora.get('dropout', '?')}) on "
            f"{_cell(lora.get('targets', '?'))}; the trunk was frozen.")


def _data_section(ce_config: Mapping[str, Any]) -> str:
    fp = ce_config.get("dataset_fingerprint") or {}
    rows = [("dataset folder", f"`{_cell(ce_config.get('dataset'))}`"), ("rows", fp.get("rows")),
            ("max_length (tokens per row)", ce_config.get("max_length")),
            ("rows cut to fit (is_truncate)", ce_config.get("is_truncate")),
            ("longest row accepted (ctx_len)", ce_config.get("ctx_len"))]
    return _table(("", "value"), rows)


def _row_format_section(ce_config: Mapping[str, Any]) -> str:
    ids = _table(("token", "id"), [("[SEP]", ce_config.get("sep_token_id")), ("[CLS]", ce_config.get("cls_token_id")),
                                   ("[PAD]", ce_config.get("pad_token_id"))])
    if ce_config.get("row_format") == "pool":
        pool = ce_config.get("pool") or {}
        docs = pool.get("documents_per_row") or {}
        k = pool.get("pool_docs")
        settings = _table(("pool setting", "value"), [
            ("documents per row asked in stage 0 (pool_docs; 0 = every usable one)", k),
            ("document order in the rows (doc_order)", pool.get("doc_order")),
            ("documents per row (min / mean / max)", f"{docs.get('min', '?')} / {docs.get('mean', '?')} / "
                                                     f"{docs.get('max', '?')}"),
            ("tokens per row at most (max_length)", pool.get("max_length"))])
        return ("Pool rows: `question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS]`, right-padded, one row per "
                "question holding its candidate documents; the score of document i is read at its CLS, where "
                "the model has read the question and documents 1..i. The `Reranker` scores a pool adapter in "
                "this format transparently (windows of the training K documents, `long_ctx.stage2.pool_rows."
                "build_pool_row`), with these ids:\n\n" + ids + "\n\n" + settings)
    fmt = ce_config.get("row_format") or "question + [SEP] + document + [CLS], right-padded; score read at length-1"
    return (f"`{fmt}`. Tokens are RWKV World ids (`long_ctx.world_tokenizer`); rows are built by "
            "`long_ctx.stage2.build_row` with these ids:\n\n" + ids)


def _settings_section(ce_config: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    flags = ce_config.get("flags") or {}
    rows: list[tuple[str, Any]] = [(label, flags[key]) for key, label in SETTINGS if key in flags]
    world = settings.get("world_size")
    if world is not None:
        rows.append(("processes (DDP world size)", world))
        if "bs" in flags and "grad_accum" in flags:
            rows.append(("rows per optimizer step", int(flags["bs"]) * int(flags["grad_accum"]) * int(world)))
    rows += [("optimizer step of this checkpoint", ce_config.get("step")), ("epoch", ce_config.get("epoch"))]
    for key, label in (("tokens_real", "real tokens seen"), ("skipped_steps", "steps skipped (non-finite)")):
        if settings.get(key) is not None:
            rows.append((label, settings[key]))
    return _table(("setting", "value"), rows)


def _metrics_section(ce_config: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> str:
    step = ce_config.get("step")
    if not metrics:
        return (f"This checkpoint was not evaluated at its step ({step}); the eval rows of the run are in its "
                "`metrics.jsonl`.")
    return (f"On the held-out groups at step {step} (the `metrics.jsonl` row of that step):\n\n"
            + _table(("metric", "value"), metrics.items()))


def _usage_adapter(ce_config: Mapping[str, Any], folder: str) -> str:
    base = ce_config.get("base_model_file") or "BASE.pth"
    return f"""```python
from cross_encoder.serving.reranker import Reranker
rr = Reranker.from_pretrained("{base}", "{folder}")   # base + this adapter, LoRA merged
rr.score("who designed the eiffel tower", ["doc a", "doc b"])  # list[float], input order
rr.rank("who designed the eiffel tower", ["doc a", "doc b"])   # [(index, score), ...] best first
```

```bash
# batch: {{"query": ..., "documents": [...]}} lines -> scores and rankings
python cross_encoder/3_rerank.py --model_file {base} --adapter {folder} --input_file queries.jsonl
# HTTP: TEI POST /rerank and Cohere/Jina POST /v1/rerank
python cross_encoder/4_serve.py --model_file {base} --adapter {folder} --port 8080
curl -s http://127.0.0.1:8080/rerank -H 'Content-Type: application/json' \\
    -d '{{"query": "who designed the eiffel tower", "texts": ["doc a", "doc b"]}}'
# one .pth with the LoRA merged, for other RWKV runtimes
python cross_encoder/5_export.py --model_file {base} --adapter {folder} --output_dir {folder}-export
```

The base model file must be `{base}` (the architecture is checked when loading). See
docs/reranking.md, docs/serving.md and docs/export.md of long-ctx-reranker."""


def _usage_export(ce_config: Mapping[str, Any], export: Mapping[str, Any]) -> str:
    head = ("keeps the base's LM head `head.weight`" if export.get("lm_head")
            else "has no LM head (the base had none)")
    return f"""`model.pth` is the trunk with the LoRA merged, in the official RWKV-5 key layout and
{export.get('dtype', 'the base dtype')}; it {head}. `score_head.safetensors` holds the score head
(`weight` [1, n_embd], `bias` [1], float32): the score of a row is
`hidden[CLS] @ weight.T + bias`, where `hidden` is the output of `ln_out` (the input of the LM head)
at the row's last real token, the CLS.

```python
import torch
from safetensors.torch import load_file
from cross_encoder.rwkv5 import load_rwkv5
trunk = load_rwkv5("model.pth", with_head=False)
head = load_file("score_head.safetensors")
ids = question_ids + [{ce_config.get('sep_token_id')}] + document_ids + [{ce_config.get('cls_token_id')}]
h = trunk.hidden(torch.tensor([ids]))[0, -1]         # [n_embd], at the CLS
score = float(h @ head["weight"][0] + head["bias"][0])
```

A runtime that only returns logits (the `rwkv` pip package, ChatRWKV) computes the same score when
`head.weight` is replaced by the score head's `weight` (its single logit plus `bias`); see
docs/export.md of long-ctx-reranker.""" + (_POOL_EXPORT if ce_config.get("row_format") == "pool" else "")


_POOL_EXPORT = """

This adapter was trained on pool rows: feed `question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS]` in
one pass and read the score of document i at the position of its CLS (`h = trunk.hidden(...)[0,
cls_positions]`), as long-ctx-reranker's `Reranker` does in windows of the training K documents."""


def build_model_card(ce_config: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                     settings: Mapping[str, Any] | None = None, export: Mapping[str, Any] | None = None) -> str:
    """The README.md text of an adapter folder (`export` None) or of an export folder.

    ce_config: the folder's cross_encoder_config.json; metrics: the eval row of its step
    (`eval_*` keys, None when it was not evaluated at that step); settings: `world_size`,
    `tokens_real`, `skipped_steps`, `folder` (the path shown in the usage snippet), any missing;
    export: `dtype`, `lm_head`, `adapter` (what was merged) for an export folder.
    """
    settings = settings or {}
    metrics = {k: v for k, v in (metrics or {}).items() if k.startswith("eval_")}
    base = ce_config.get("base_model_file") or "unknown"
    if export is None:
        head = front_matter(ce_config, metrics, "peft")
        what = (f"A LoRA adapter and score head for the RWKV-5 base `{base}`, trained as a cross-encoder "
                "reranker with long-ctx-reranker (`cross_encoder/1_peft_training_ce.py`). The folder holds "
                "the peft adapter (`adapter_config.json`, `adapter_model.safetensors`: LoRA + score head, never "
                "the trunk), `cross_encoder_config.json` (special ids, row length, the run's flags) and, for "
                "resuming, `training_state.pt`.")
        usage = _usage_adapter(ce_config, str(settings.get("folder") or "ADAPTER_DIR"))
    else:
        head = front_matter(ce_config, metrics, None, extra_tags=("merged",))
        what = (f"The RWKV-5 base `{base}` with the LoRA of the adapter `{export.get('adapter', '?')}` merged "
                "into its weights, and the score head beside it (`cross_encoder/5_export.py`).")
        usage = _usage_export(ce_config, export)
    sections = [
        ("Model", _model_section(ce_config)),
        ("Training data", _data_section(ce_config)),
        ("Row format and special ids", _row_format_section(ce_config)),
        ("Training settings", _settings_section(ce_config, settings)),
        ("Evaluation", _metrics_section(ce_config, metrics)),
        ("Usage", usage),
    ]
    body = "\n\n".join(f"## {name}\n\n{text}" for name, text in sections)
    return f"{head}\n\n# RWKV-5 cross-encoder reranker (step {ce_config.get('step', '?')})\n\n{what}\n\n{body}\n"


def write_model_card(path: str | Path, ce_config: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                     settings: Mapping[str, Any] | None = None, export: Mapping[str, Any] | None = None) -> Path:
    """Write `build_model_card(...)` to `path` atomically."""
    text = build_model_card(ce_config, metrics, settings, export)
    with atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))
    return Path(path)
