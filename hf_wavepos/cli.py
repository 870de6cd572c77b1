"""``wavepos``: command-line entry point (thin wrappers over the library).

    wavepos --version
    wavepos basis [--preset oka2025] [--head-dim 64] [--length 2048] [--plot basis.png] [--json]
    wavepos demo [--out runs/demo] [--quick]
    wavepos bench extrapolation [--config extrapolation_cpu|FILE.yaml] [--methods rope,long] [--out DIR]
    wavepos bench extrapolation --rescore RUN --eval-documents 40 --out DIR   (score a finished run's models again)
    wavepos bench retrieval [--config retrieval_cpu|FILE.yaml] [--methods ...] [--out DIR]
    wavepos train CONFIG.yaml [section.key=value ...] [--recipe pretrain|continue|lora] [--resume_from_checkpoint latest]
    wavepos eval {ppl,passkey,needle,longdoc} ...      (see `wavepos eval --help`)
    wavepos convert SRC OUT --position PRESET_OR_JSON [--train-length N] [--gguf-file NAME]   (SRC: folder, Hub id or GGUF)
    wavepos bench conversion [--config conversion_cpu|FILE.yaml] [--methods ...] [--out DIR]
    wavepos card MODEL_DIR --out FOLDER [--tokenizer PATH_OR_ID] [--eval-run RUN --label NAME ...]
    wavepos push MODEL_DIR REPO_ID [--tokenizer PATH_OR_ID] [--eval-run RUN ...] [--private] [--revision BRANCH] [--dry-run --out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_wavepos.version import __version__
from hf_wavepos.basis import wavelet_support
from hf_wavepos.wavelets import get_wavelet, registered_wavelets
from hf_wavepos.config import PRESETS, WavePosConfig


def _basis(args: argparse.Namespace) -> int:
    config = WavePosConfig.from_preset(args.preset)
    overrides = {k: v for k, v in (("wavelet", args.wavelet), ("num_scales", args.num_scales)) if v is not None}
    if overrides:
        config = config.replace(**overrides)
    config.check_head_dim(args.head_dim)
    pairs = config.scales_and_shifts(args.head_dim)
    support = wavelet_support(config, args.head_dim)
    summary = {
        "preset": args.preset,
        "config": config.to_dict(),
        "head_dim": args.head_dim,
        "scales": sorted({a for a, _ in pairs}),
        "shifts": sorted({b for _, b in pairs}),
        "support_1e-6": support,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"preset {args.preset}: {config.wavelet} wavelet ({get_wavelet(config.wavelet).description})")
        print(f"  head_dim {args.head_dim} = {config.num_scales} scales x {config.resolved_shifts(args.head_dim)} shifts")
        print(f"  scales a: {', '.join(f'{a:g}' for a in summary['scales'])}")
        print(f"  shifts b: 0..{max(summary['shifts'])}   sign: t = ({config.sign_convention} - b) / a")
        print(f"  |p[r]| < 1e-6 for every r >= {support}" if support is not None else "  no finite support")
        if config.log_n_scaling:
            print(f"  log-n query scaling past train_length = {config.train_length}")
        print(f"  registered wavelets: {', '.join(registered_wavelets())}")
    if args.plot:
        from hf_wavepos.experiments.basis_plot import plot_basis

        path = plot_basis(config, args.head_dim, args.length, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hf_wavepos.experiments.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def _card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="folder of a saved wavepos model (with its tokenizer)")
    parser.add_argument("--tokenizer", metavar="PATH_OR_ID",
                        help="folder or Hub id of the model's tokenizer (default: MODEL_DIR)")
    parser.add_argument("--eval-run", help="evaluation run folder (`wavepos eval ... --out RUN`) for the card")
    parser.add_argument("--label", help="this model's label in the evaluation run")
    parser.add_argument("--name", help="display name (default: the output folder's or repository's name)")
    parser.add_argument("--base-model", help="Hub id of the model it was converted from")
    parser.add_argument("--dataset", action="append", default=[], help="training dataset id (repeatable)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--recipe", help="training recipe: a text or a YAML file shown in the card")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def _recipe_text(value: str | None) -> str | None:
    """``--recipe``: a YAML file's text in a code block, or the given text as it is (a text with line
    breaks or longer than a file name can be is never taken for a path)."""
    try:
        is_file = bool(value) and "\n" not in value and Path(value).is_file()
    except OSError:  # e.g. "File name too long"
        is_file = False
    if is_file:
        return f"Training configuration (`{Path(value).name}`):\n\n```yaml\n{Path(value).read_text().strip()}\n```"
    return value


def _tokenizer(args: argparse.Namespace):
    """The tokenizer of ``card`` / ``push``: from --tokenizer, else from MODEL_DIR (remedy named)."""
    from transformers import AutoTokenizer

    from hf_wavepos.sources import check_local_source, loading_errors

    if not Path(args.model_dir).is_dir():
        raise ValueError(f"MODEL_DIR {args.model_dir} is not a folder; give the folder of a saved wavepos model.")
    if args.tokenizer:
        check_local_source(args.tokenizer, "--tokenizer")
    source = args.tokenizer or args.model_dir
    try:
        return AutoTokenizer.from_pretrained(source)
    except (*loading_errors(), ValueError) as err:
        if args.tokenizer:
            raise ValueError(f"no tokenizer could be loaded from --tokenizer {args.tokenizer} ({err}).") from err
        raise ValueError(
            f"{args.model_dir} holds no tokenizer ({err}). Give the model's tokenizer with --tokenizer PATH_OR_ID "
            f"(the folder or Hub id it was saved to or trained with), or copy the tokenizer files into "
            f"{args.model_dir} (tokenizer.json, tokenizer_config.json, special_tokens_map.json, ...)."
        ) from err


def _assemble(args: argparse.Namespace, out: Path, repo_id: str) -> Path:
    from hf_wavepos.hub import assemble_folder

    tokenizer = _tokenizer(args)
    return assemble_folder(
        args.model_dir, out, tokenizer=tokenizer, eval_run=args.eval_run, label=args.label, repo_id=repo_id,
        name=args.name or repo_id.split("/")[-1], base_model=args.base_model, datasets=args.dataset,
        license=args.license, recipe=_recipe_text(args.recipe), overwrite=args.overwrite,
    )


def _card(args: argparse.Namespace) -> int:
    folder = _assemble(args, Path(args.out), args.repo_id or Path(args.out).name)
    print(f"wrote {folder} (README.md card, safetensors weights, remote code, tokenizer"
          f"{', eval files' if args.eval_run else ''}); upload it with `wavepos push`.")
    return 0


def _push(args: argparse.Namespace) -> int:
    import tempfile

    from hf_wavepos.hub import push_folder

    if args.dry_run and not args.out:
        raise ValueError("--dry-run writes the folder that would be uploaded: give it with --out FOLDER.")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / args.repo_id.split("/")[-1]
        folder = _assemble(args, out, args.repo_id)
        if args.dry_run:
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            print(f"dry run: {folder} holds what would be uploaded to {args.repo_id}:\n  " + "\n  ".join(files))
            return 0
        url = push_folder(folder, args.repo_id, private=args.private, revision=args.revision, token=args.token)
    print(f"uploaded: {url}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``wavepos bench extrapolation|retrieval|conversion``: the config file (or the quick one), a method subset."""
    import dataclasses

    if getattr(args, "rescore", None):
        from hf_wavepos.experiments.extrapolation import rescore_run

        if args.eval_documents is None:
            raise ValueError("--rescore needs --eval-documents N (how many held-out long files to score).")
        rescore_run(args.rescore, Path(args.out), args.eval_documents)
        return 0
    if args.benchmark == "conversion":
        from hf_wavepos.experiments.conversion import ConversionConfig, run_conversion

        config = ConversionConfig.from_yaml(args.config)
        if args.methods:
            config = config.subset(tuple(args.methods.split(",")))
        command = f"wavepos bench conversion --config {args.config}" + (f" --methods {args.methods}" if args.methods else "")
        run_conversion(config, Path(args.out), command=f"{command} --out {args.out}")
        return 0
    if args.benchmark == "extrapolation":
        from hf_wavepos.experiments.demo import QUICK
        from hf_wavepos.experiments.extrapolation import ExtrapolationConfig as Config
        from hf_wavepos.experiments.extrapolation import run_extrapolation as run
    else:
        from hf_wavepos.experiments.retrieval import QUICK
        from hf_wavepos.experiments.retrieval import RetrievalConfig as Config
        from hf_wavepos.experiments.retrieval import run_retrieval as run

    config = QUICK if args.quick else Config.from_yaml(args.config)
    if args.methods:
        config = dataclasses.replace(config, methods=tuple(args.methods.split(",")))
    run(config, Path(args.out))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from hf_wavepos.convert import convert_checkpoint

    report = convert_checkpoint(args.src, args.out, args.position, train_length=args.train_length,
                                gguf_file=args.gguf_file, dtype=args.dtype, overwrite=args.overwrite,
                                trust_remote_code=args.trust_remote_code)
    print(report.describe())
    return 0


def _train(args: argparse.Namespace) -> int:
    from hf_wavepos.training import run_recipe

    argv = [args.config, *args.overrides]
    if args.resume_from_checkpoint:
        argv += ["--resume_from_checkpoint", args.resume_from_checkpoint]
    run_recipe(args.recipe, argv)
    return 0


def _methods_help() -> dict[str, str]:
    """``--methods`` help of each benchmark: what its method names look like."""
    from hf_wavepos.experiments.conversion_config import POSITIONS, RECIPES

    trained = ("comma-separated subset of position methods, each trained and scored alike, e.g. rope,long,alibi "
               "(names: nope, rope, alibi, oka2025, long and variants; an unknown name lists them all)")
    return {
        "extrapolation": trained,
        "retrieval": trained,
        "conversion": (f"comma-separated subset of POSITION:RECIPE methods, e.g. rope:plain,long:transfer "
                       f"(POSITION: {', '.join(POSITIONS)}; RECIPE: {', '.join(RECIPES)}); the config's control "
                       "method (control, default rope:plain) is always kept, first"),
    }


_METHODS_HELP = _methods_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavepos", description="Wavelet positions for Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"hf_wavepos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    basis = sub.add_parser("basis", help="describe (and plot) the wavelet table of a preset")
    basis.add_argument("--preset", default="oka2025", choices=sorted(PRESETS))
    basis.add_argument("--wavelet", choices=registered_wavelets(), help="override the preset's wavelet")
    basis.add_argument("--num-scales", type=int, help="override the preset's number of scales")
    basis.add_argument("--head-dim", type=int, default=64)
    basis.add_argument("--length", type=int, default=2048, help="distances shown in the plot")
    basis.add_argument("--plot", metavar="PNG", help="write a plot of p[r] to this file")
    basis.add_argument("--json", action="store_true", help="print the summary as JSON")
    basis.set_defaults(func=_basis)

    demo = sub.add_parser("demo", help="the main job on the embedded default data (see README)")
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks comparing position methods").add_subparsers(
        dest="benchmark", metavar="BENCHMARK", required=True)
    for name, what in (("extrapolation", "train each method identically, perplexity up to 16x L_train"),
                       ("retrieval", "train each method on corpus + passkey samples, accuracy up to 16x L_train"),
                       ("conversion", "convert a pretrained RoPE model, recalibrate each method identically, compare")):
        command = bench.add_parser(name, help=what)
        command.add_argument("--config", default=f"{name}_cpu",
                             help=f"a shipped config ({name}_cpu, {name}_gpu) or a YAML file of settings")
        command.add_argument("--methods", help=_METHODS_HELP[name])
        command.add_argument("--out", default=f"runs/{name}", help="output folder")
        if name != "conversion":
            command.add_argument("--quick", action="store_true", help="toy sizes (for tests)")
        command.set_defaults(func=_bench)
        if name == "extrapolation":
            command.add_argument("--rescore", metavar="RUN", help="score the models of a finished run again (no training)")
            command.add_argument("--eval-documents", type=int, help="with --rescore: number of held-out long files")

    convert = sub.add_parser("convert", help="convert a pretrained RoPE / GPT-2 checkpoint (folder, Hub id, GGUF) to wavepos")
    convert.add_argument("src", help="model folder, Hub id, .gguf file, or a folder holding one .gguf file")
    convert.add_argument("out", help="folder to write the wavepos checkpoint to")
    convert.add_argument("--position", required=True, metavar="PRESET_OR_JSON",
                         help=f"{', '.join(sorted(PRESETS))}, a wavepos JSON dict (e.g. '{{\"preset\": \"long\", "
                              "\"num_scales\": 8}'), or rope (keep the stock positions: re-save, e.g. GGUF -> safetensors)")
    convert.add_argument("--train-length", type=int, help="recalibration length in tokens (log-n scaling starts past it)")
    convert.add_argument("--gguf-file", help="the GGUF file inside SRC when it holds several")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    convert.add_argument("--trust-remote-code", action="store_true", help="allow the source's own modelling code")
    convert.set_defaults(func=_convert)

    train = sub.add_parser("train", help="run a training recipe (same as recipes/<recipe>.py; see recipes/README.md)")
    train.add_argument("config", help="experiment YAML, e.g. recipes/configs/tiny_cpu.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=20")
    train.add_argument("--recipe", choices=["pretrain", "continue", "lora"], default="pretrain")
    train.add_argument("--resume_from_checkpoint", metavar="latest|DIR")
    train.set_defaults(func=_train)

    from hf_wavepos.eval.commands import add_eval_commands

    add_eval_commands(sub)

    card = sub.add_parser("card", help="assemble a Hub-ready folder (model card, weights, remote code)")
    _card_options(card)
    card.add_argument("--out", required=True, help="folder to write")
    card.add_argument("--repo-id", help="Hub id used in the card's loading examples")
    card.set_defaults(func=_card)

    push = sub.add_parser("push", help="assemble the folder and upload it to the Hugging Face Hub")
    _card_options(push)
    push.add_argument("repo_id", help="user/name on the Hub (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    push.add_argument("--dry-run", action="store_true", help="write the folder (--out) and upload nothing")
    push.add_argument("--out", help="where to write the folder (kept); default a temporary folder")
    push.set_defaults(func=_push)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with options and positional lists in any order.

    argparse fills a ``nargs="*"`` positional (``train``'s overrides) only from the tokens before
    the first option, so ``wavepos train CFG --recipe continue a=b`` would leave ``a=b`` over:
    leftover ``key=value`` tokens of ``train`` join its overrides; any other leftover token is an
    error naming it (exit status 2).
    """
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides = [*args.overrides, *(t for t in extra if "=" in t and not t.startswith("-"))]
        extra = [t for t in extra if not ("=" in t and not t.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}"
                     + (f" (see `wavepos {args.command} --help`)" if args.command else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as err:
        parser.exit(2, f"wavepos {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
