"""``wavepos``: command-line entry point (thin wrappers over the library).

    wavepos --version
    wavepos basis [--preset oka2025] [--head-dim 64] [--length 2048] [--plot basis.png] [--json]
    wavepos demo [--out runs/demo] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_wavepos import __version__
from hf_wavepos.basis import get_wavelet, registered_wavelets, wavelet_support
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
        from hf_wavepos.plots import plot_basis

        path = plot_basis(config, args.head_dim, args.length, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hf_wavepos.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"wavepos {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
