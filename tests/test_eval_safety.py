"""Issue 9, evaluation and reranking: outputs checked before any work (never an input, a folder, or
each other), a query longer than the row still leaves the documents room (counted, warned once),
a bad base model file is one line, progress to a pipe is plain lines, hostile lines are skipped."""
import runpy
import sys
import warnings

import numpy as np
import orjson
import pytest
from eval_helpers import REPO, sample_lines, shared_assets, stub_ce_config

from cross_encoder.evaluation.evaluator import EvalConfig
from cross_encoder.evaluation.evaluator import main as evaluate
from cross_encoder.serving.rerank_cli import RerankConfig
from cross_encoder.serving.rerank_cli import main as rerank
from cross_encoder.serving.reranker import QueryCutWarning, Reranker
from long_ctx.common.cli import UsageError
from long_ctx.stage0.nq_format import parse_line, render_text

LONG_QUERY = "which of these words " * 30  # ~120 tokens: far longer than a 20-token row


class NoWork:
    """A reranker that must never be reached: the checks come first."""
    max_length, sep, cls, pad, device, ce_config = 64, 2, 1, 0, "cpu", stub_ce_config()

    def score_many(self, pools):
        raise AssertionError("scoring started before the output paths were checked")


class Constant(NoWork):
    def score_many(self, pools):
        return [[0.0] * len(docs) for _, docs in pools]


@pytest.fixture(scope="module")
def nq_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nq") / "nq.jsonl"
    path.write_bytes(b"\n".join(sample_lines(3)) + b"\n")
    return path


@pytest.fixture(scope="module")
def short_reranker():
    model, adapter = shared_assets()
    return Reranker.from_pretrained(model, adapter, device="cpu", max_length=20)


def eval_config(nq_file, tmp_path, **kw):
    base = dict(model_file=str(nq_file), adapter="unused", input_file=str(nq_file),
                output_json=str(tmp_path / "r.json"), progress=False)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------ defects 4, 13: output paths


@pytest.mark.parametrize("flag", ["output_json", "per_question", "output_plot"])
def test_evaluator_never_writes_over_its_input(nq_file, tmp_path, flag):
    before = nq_file.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(nq_file)  # the same file under another name
    for target in (nq_file, link):
        with pytest.raises(UsageError, match=f"--{flag} .* is the input"):
            evaluate(eval_config(nq_file, tmp_path, **{flag: str(target)}), reranker=NoWork())
    assert nq_file.read_bytes() == before


def test_evaluator_outputs_are_checked_before_any_work(nq_file, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [(dict(output_json=str(tmp_path / "adir")), "--output_json .*adir is a folder"),
             (dict(per_question=str(tmp_path / "adir")), "--per_question .*adir is a folder"),
             (dict(output_json=str(tmp_path / "a_file" / "r.json")), "a_file is a file"),
             (dict(per_question=str(tmp_path / "r.json")), "--per_question and --output_json are the same file"),
             (dict(output_json=str(tmp_path / "r.png")), "--output_plot and --output_json are the same file")]
    for kw, match in cases:
        with pytest.raises(UsageError, match=match):
            evaluate(eval_config(nq_file, tmp_path, **kw), reranker=NoWork())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "adir"]


def test_rerank_never_writes_over_its_input_and_checks_first(tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_bytes(orjson.dumps({"query": "q", "documents": ["a"]}) + b"\n")
    before = src.read_bytes()
    (tmp_path / "adir").mkdir()
    for out, match in ((src, "--output_file .* is the input"), (tmp_path / "adir", "is a folder"),
                       (tmp_path / "out.jsonl.zst", "plain jsonl, not compressed")):
        with pytest.raises(UsageError, match=match):
            rerank(RerankConfig(model_file=str(src), adapter="unused", input_file=str(src), output_file=str(out),
                                progress=False), reranker=NoWork())
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "q.jsonl"]


# ------------------------------------------------------------------ defect 14: a bad base model


@pytest.mark.parametrize("content", [b"", b"not a model\n", np.random.default_rng(1).bytes(2048)],
                         ids=["empty", "text", "random"])
def test_scripts_refuse_a_base_model_that_is_no_checkpoint_with_one_line(nq_file, tmp_path, monkeypatch, content):
    _, adapter = shared_assets()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    for script, extra in (("2_evaluate_ce.py", ["--output_json", str(tmp_path / "r.json")]),
                          ("3_rerank.py", ["--output_file", str(tmp_path / "o.jsonl")])):
        monkeypatch.setattr(sys, "argv", [script, "--model_file", str(bad), "--adapter", str(adapter),
                                          "--input_file", str(nq_file), "--device", "cpu", *extra])
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(REPO / "cross_encoder" / script), run_name="__main__")
        msg = str(exc.value.code)
        assert msg.startswith("error: --model_file") and "\n" not in msg
        assert any(w in msg for w in ("is empty", "is not a PyTorch checkpoint")), msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


# ------------------------------------------------------------------ defect 11: long queries


def test_a_query_longer_than_the_row_still_ranks_the_documents(short_reranker):
    rr = Reranker(short_reranker.model, short_reranker.ce_config, max_length=20)
    docs = ["The tower was built by Ola.", "Cats sleep all day.", "", "Paris is in France."]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = rr.score(LONG_QUERY, docs)
        rr.score(LONG_QUERY, docs[:2])
    assert np.ptp(scores) > 1e-3  # before: every document was cut to nothing, all scores equal
    assert rr.queries_cut == 2
    assert [w.category for w in caught] == [QueryCutWarning]  # once per Reranker
    # The documented rule: the query keeps its first (max_length - 2) // 2 tokens.
    q, d = rr.encode(LONG_QUERY, docs)
    keep = (20 - 2) // 2
    assert rr.prefix_length(q) == keep + 1
    for doc in d:
        assert rr.row(q, doc) == q[:keep] + [rr.sep] + doc[:20 - 2 - keep] + [rr.cls]
    np.testing.assert_allclose(rr.score_ids_per_pair(q, d), scores, atol=2e-5, rtol=1e-5)


def test_evaluator_and_rerank_report_cut_queries(short_reranker, tmp_path, capsys):
    long, short = (parse_line(line) for line in sample_lines(2))
    long.question, short.question = LONG_QUERY.strip(), "who built it"
    nq = tmp_path / "long.jsonl"
    nq.write_bytes(b"".join(orjson.dumps({"text": render_text(r)}) + b"\n" for r in (long, short)))
    res = evaluate(eval_config(nq, tmp_path), reranker=short_reranker)
    assert res["questions_cut"] == 1 and res["num_questions"] == 2
    out = capsys.readouterr().out
    assert "warning: 1 questions were longer than 9 tokens (half the row)" in out
    q = tmp_path / "q.jsonl"
    q.write_bytes(orjson.dumps({"query": LONG_QUERY, "documents": ["a b c", "d e"]}) + b"\n")
    summary = rerank(RerankConfig(model_file=str(nq), adapter="unused", input_file=str(q), progress=False),
                     reranker=short_reranker)
    assert summary["queries_cut"] == 1 and "warning: 1 queries were longer than 9 tokens" in capsys.readouterr().out


# ------------------------------------------------------------------ defect 19: progress to a pipe


def test_progress_written_to_a_pipe_is_plain_lines(nq_file, tmp_path, capsys):
    evaluate(eval_config(nq_file, tmp_path, progress=True), reranker=Constant())
    q = tmp_path / "q.jsonl"
    q.write_bytes(orjson.dumps({"query": "q", "documents": ["a"]}) + b"\n")
    rerank(RerankConfig(model_file=str(q), adapter="unused", input_file=str(q), progress=True), reranker=Constant())
    err = capsys.readouterr().err  # not a terminal here
    assert "\r" not in err and len(err.splitlines()) <= 2, err


# ------------------------------------------------------------------ defect 7: a deeply nested line


DEEP = b'{"text": ' + b"[" * 2000 + b"]" * 2000 + b"}"
DEEP_UNUSED = b'{"meta": ' + b"[" * 2000 + b"]" * 2000 + b', "text": "x"}'


def test_evaluator_skips_and_counts_a_deeply_nested_line(nq_file, tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(DEEP + b"\n" + nq_file.read_bytes() + DEEP_UNUSED + b"\n")
    res = evaluate(eval_config(path, tmp_path), reranker=Constant())
    assert res["num_questions"] == 3 and res["lines_read"] == 5
    assert sum(v for k, v in res["skipped"].items() if k in ("invalid_json", "too_deeply_nested")) == 2


def test_rerank_skips_and_counts_a_deeply_nested_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(DEEP + b"\n" + orjson.dumps({"query": "q", "documents": ["a"]}) + b"\n")
    summary = rerank(RerankConfig(model_file=str(path), adapter="unused", input_file=str(path),
                                  output_file=str(tmp_path / "o.jsonl"), progress=False), reranker=Constant())
    assert summary["queries"] == 1 and summary["skipped"] == {"invalid_json": 1}
