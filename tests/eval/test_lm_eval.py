"""lm-evaluation-harness compatibility: a saved wavepos model runs a local lm_eval task through
``--model hf --model_args pretrained=<folder>,trust_remote_code=True``, without the plugin."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_wavepos import apply_wavepos  # noqa: E402
from hf_wavepos.eval.datasets_offline import debian_faq_qa_records  # noqa: E402
from tests.tiny_lm import tiny_llama  # noqa: E402

TASK_YAML = """\
task: wavepos_local_faq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

RUN_LM_EVAL = textwrap.dedent("""
    import json, sys
    sys.modules["hf_wavepos"] = None  # the plugin is not importable: only the saved remote code is
    import lm_eval
    from lm_eval.tasks import TaskManager
    folder, tasks_dir, out = sys.argv[1:4]
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32",
        tasks=["wavepos_local_faq"], task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
        device="cpu", batch_size=1, bootstrap_iters=0, random_seed=0,
    )
    json.dump({"acc": results["results"]["wavepos_local_faq"]["acc,none"],
               "n": results["n-samples"]["wavepos_local_faq"]["effective"],
               "model_class": results["config"]["model"]}, open(out, "w"))
""")


def choice_loglik(model, tokenizer, context, continuation):
    """log p(continuation | context), split as lm_eval's HFLM does (trailing spaces move to the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    return sum(logprobs[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


@pytest.mark.slow
def test_lm_eval_runs_a_local_task_on_a_saved_wavepos_model(tokenizer, tmp_path):
    records = debian_faq_qa_records()[:6]
    docs = []
    for i, r in enumerate(records):  # 3 choices: the right answer and two answers to other questions
        others = [records[(i + k) % len(records)]["answers"][0] for k in (1, 2)]
        choices = others[: i % 3] + [r["answers"][0]] + others[i % 3 :]
        docs.append({"question": r["input"], "choices": choices, "label": i % 3})
    data = tmp_path / "faq_mc.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "wavepos_local_faq.yaml").write_text(TASK_YAML.format(data=data))

    model = apply_wavepos(tiny_llama(len(tokenizer), seed=5), "oka2025")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "lm_eval.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", RUN_LM_EVAL, str(folder), str(tasks_dir), str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n"] == len(docs)

    # the same accuracy computed here with the plugin's model object
    correct = 0
    for d in docs:
        context = f"Question: {d['question']}\nAnswer:"
        scores = [choice_loglik(model, tokenizer, context, " " + c) for c in d["choices"]]
        correct += max(range(3), key=scores.__getitem__) == d["label"]
    assert result["acc"] == pytest.approx(correct / len(docs))
