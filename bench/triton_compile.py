"""Compile every Triton kernel launch for sm_80 and sm_90 ahead of time (no GPU needed) and record
registers, spills and shared memory of each default configuration (hf_wavepos.attention.triton.
compile_check; the CI test tests/attention/test_triton_compile.py runs the same matrix).

    python bench/triton_compile.py [--out bench/results/triton_compile.json] [--workers N]

Prints the table and writes it as JSON with the limits, any problems, the compile wall time and
the CPU; exits 1 when a compile fails or a configuration breaks a limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hf_wavepos.attention.triton import compile_check
from hf_wavepos.attention.triton.configs import SHARED_FRACTION, SHARED_LIMIT, SPILL_LIMIT
from hf_wavepos.benchmark import cpu_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/triton_compile.json", help="JSON result file")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: CPU count)")
    args = parser.parse_args(argv)

    import triton

    load_before = os.getloadavg()[0]  # the box may be shared: the wall time depends on it
    result = compile_check.run(workers=args.workers)
    rows = result["rows"]
    problems = compile_check.problems(rows)
    print(compile_check.format_table(rows))
    print(f"{len(rows)} compiles, {result['seconds']} s wall "
          f"with {result['workers']} processes on {cpu_name()}; problems: {problems or 'none'}")
    record = dict(
        command="python bench/triton_compile.py",
        triton=triton.__version__,
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        workers=result["workers"],
        wall_seconds=result["seconds"],
        load_average_1min=dict(before=round(load_before, 2), after=round(os.getloadavg()[0], 2)),
        compile_seconds_summed=round(sum(r["seconds"] for r in rows), 1),
        limits=dict(spill_stores_per_thread=SPILL_LIMIT, shared_fraction=SHARED_FRACTION, shared_bytes=SHARED_LIMIT),
        max_spill_stores={t: max(r.get("spill_stores", 0) for r in rows if r["target"] == t) for t in SHARED_LIMIT},
        max_shared={t: max(r.get("shared", 0) for r in rows if r["target"] == t) for t in SHARED_LIMIT},
        problems=problems,
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
