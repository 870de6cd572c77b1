"""``wavepos eval {ppl,passkey,needle,longdoc}``: thin command-line wrappers over hf_wavepos.eval.

Every command takes one or more ``--model [label=]path_or_hub_id`` and writes into one run
folder (``--out``, default ``runs/eval``), recorded in ``run.json`` (see `hf_wavepos.eval.report`)::

    wavepos eval ppl --model rope=ckpt/rope --model wave=ckpt/wave --data stdlib-heldout:40 --lengths 512,1024,2048,4096
    wavepos eval ppl --model ckpt/wave --mode sliding --stride 256 --lengths 512,1024
    wavepos eval passkey --model ckpt/wave --lengths 512,1024,2048 --depths 0,0.25,0.5,0.75,1
    wavepos eval needle --model ckpt/wave --variant distractor --needles 4
    wavepos eval longdoc --model ckpt/wave --data debian_faq_qa --max-length 4096
    wavepos eval longdoc --model ckpt/wave --data THUDM/LongBench --dataset-config qasper --task qasper
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected depths in [0, 1], got {text!r}")
    return values


def _models(args):
    """Load the --model specs one at a time (a generator: one model in memory per step)."""
    from hf_wavepos.eval.models import load_model

    labels = set()
    for spec in args.model:
        label, model, tokenizer = load_model(
            spec, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
            attn_implementation=args.attn_implementation,
        )
        if label in labels:
            raise ValueError(f"two --model specs have the label {label!r}; write them as label=path")
        labels.add(label)
        yield label, model, tokenizer


def _ppl(args) -> int:
    from hf_wavepos.eval.perplexity import perplexity_report
    from hf_wavepos.eval.report import write_perplexity
    from hf_wavepos.eval.texts import load_texts

    texts = load_texts(args.data, text_column=args.text_column, config_name=args.dataset_config, split=args.split,
                       min_chars=args.min_chars, max_documents=args.max_docs)
    report = perplexity_report(_models(args), texts, args.lengths, mode=args.mode, stride=args.stride,
                               batch_size=args.batch_size, max_tokens=args.max_tokens, source=args.data)
    files = write_perplexity(report, args.out, args.train_length)
    for label, rows in report["results"].items():
        print(f"{label}: " + ", ".join(f"{r['length']}: {r['perplexity']:.2f}" for r in rows))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _passkey(args) -> int:
    from hf_wavepos.eval.passkey import run_passkey
    from hf_wavepos.eval.report import write_retrieval

    results = {}
    for label, model, tokenizer in _models(args):
        results[label] = run_passkey(model, tokenizer, args.lengths, args.depths, num_samples=args.samples,
                                     haystack=args.haystack, seed=args.seed, key_digits=args.key_digits, label=label)
        print(f"{label}: passkey accuracy {results[label]['mean_accuracy']:.3f}")
    files = write_retrieval(results, args.out, "passkey")
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _needle(args) -> int:
    from hf_wavepos.eval.needle import run_needle
    from hf_wavepos.eval.report import write_retrieval

    results = {}
    for label, model, tokenizer in _models(args):
        results[label] = run_needle(model, tokenizer, args.lengths, args.depths, variant=args.variant,
                                    num_needles=args.needles, num_samples=args.samples, haystack=args.haystack,
                                    seed=args.seed, label=label)
        print(f"{label}: needle/{args.variant} score {results[label]['mean_score']:.3f}")
    files = write_retrieval(results, args.out, f"needle_{args.variant}")
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _longdoc(args) -> int:
    from hf_wavepos.eval.datasets_offline import BUILTIN_SETS
    from hf_wavepos.eval.longdoc import TEMPLATES, load_longdoc_records, run_longdoc
    from hf_wavepos.eval.report import write_longdoc

    task = args.task or (args.data if args.data in BUILTIN_SETS else args.dataset_config)
    if task not in TEMPLATES:
        raise ValueError(f"--task {task!r} has no prompt template; choose one of {sorted(TEMPLATES)}")
    records = load_longdoc_records(args.data, config_name=args.dataset_config, split=args.split, limit=args.limit)
    results = {}
    for label, model, tokenizer in _models(args):
        results[label] = run_longdoc(model, tokenizer, records, task, max_length=args.max_length,
                                     max_new_tokens=args.max_new_tokens, label=label)
        r = results[label]
        print(f"{label}: {task} {r['metric']} {r['score']:.2f} over {r['num_records']} records ({r['num_truncated']} truncated)")
    files = write_longdoc(results, args.out, task)
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                        help="model folder or Hub id, optionally labelled; repeat to compare models")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"), help="run folder (default runs/eval)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own code")
    parser.add_argument("--attn-implementation", help="e.g. eager (wavepos reference backend) or sdpa")
    parser.add_argument("--seed", type=int, default=0)


def add_eval_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` with its sub-commands ``ppl``, ``passkey``, ``needle``, ``longdoc`` to a
    ``wavepos`` argparse subparsers object; each sets ``func`` (returns the exit code)."""
    evaluate = subparsers.add_parser("eval", help="evaluate models: perplexity vs length, passkey, needle, long documents",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = evaluate.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    ppl = sub.add_parser("ppl", help="perplexity against context length (JSON, CSV, PNG)")
    _common(ppl)
    ppl.add_argument("--data", default="stdlib", help="stdlib, stdlib-heldout:N[:SEED] (a recipe's held-out files), "
                     "a .jsonl / text file / folder, or a Hub dataset name")
    ppl.add_argument("--text-column", default="text")
    ppl.add_argument("--dataset-config")
    ppl.add_argument("--split", default="test")
    ppl.add_argument("--lengths", type=_int_list, default=[256, 512, 1024, 2048], help="comma-separated token counts")
    ppl.add_argument("--mode", choices=["full", "sliding"], default="full")
    ppl.add_argument("--stride", type=int, help="sliding mode: tokens the window moves")
    ppl.add_argument("--batch-size", type=int, default=1)
    ppl.add_argument("--max-docs", type=int, help="use at most this many documents")
    ppl.add_argument("--min-chars", type=int, default=0, help="skip documents shorter than this many characters")
    ppl.add_argument("--max-tokens", type=int, help="cut every document to this many tokens")
    ppl.add_argument("--train-length", type=int, help="mark the training length on the plot")
    ppl.set_defaults(func=_ppl)

    for name, help_ in (("passkey", "passkey retrieval accuracy by length and depth"),
                        ("needle", "needle-in-a-haystack heatmap (exact match)")):
        p = sub.add_parser(name, help=help_)
        _common(p)
        p.add_argument("--lengths", type=_int_list, default=[512, 1024, 2048, 4096])
        p.add_argument("--depths", type=_float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0])
        p.add_argument("--samples", type=int, default=5, help="prompts per (length, depth) cell")
        p.add_argument("--haystack", default="debian-faq",
                       help="debian-faq, stdlib-docstrings, classic, or a text source (path / Hub dataset)")
        if name == "passkey":
            p.add_argument("--key-digits", type=int, default=5)
            p.set_defaults(func=_passkey)
        else:
            p.add_argument("--variant", choices=["single", "multi", "distractor"], default="single")
            p.add_argument("--needles", type=int, default=3, help="needles per prompt (multi / distractor)")
            p.set_defaults(func=_needle)

    longdoc = sub.add_parser("longdoc", help="long-document QA / summarisation (F1, ROUGE-L)")
    _common(longdoc)
    longdoc.add_argument("--data", default="debian_faq_qa",
                         help="debian_faq_qa, stdlib_summ, a LongBench/SCROLLS-shaped .jsonl, or a Hub dataset")
    longdoc.add_argument("--task", help="prompt template (default: the built-in set's, or --dataset-config)")
    longdoc.add_argument("--dataset-config", help="Hub dataset configuration (LongBench / SCROLLS task)")
    longdoc.add_argument("--split", default="test")
    longdoc.add_argument("--limit", type=int, help="evaluate the first N records")
    longdoc.add_argument("--max-length", type=int, help="window in tokens (prompt + answer); default: from the config")
    longdoc.add_argument("--max-new-tokens", type=int, help="override the task's answer length")
    longdoc.set_defaults(func=_longdoc)
    return evaluate
