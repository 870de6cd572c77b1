import json
import subprocess
import sys

import pytest

from hf_wavepos import __version__
from hf_wavepos.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_basis_json_and_plot(tmp_path, capsys):
    png = tmp_path / "basis.png"
    assert main(["basis", "--preset", "oka2025-4k", "--head-dim", "128", "--json", "--plot", str(png), "--length", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scales"][0] == 4.0 and summary["scales"][-1] == 512.0
    assert summary["shifts"] == list(range(16))
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_basis_bad_head_dim_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["basis", "--preset", "long", "--head-dim", "40"])
    assert exit_.value.code == 2
    assert "num_scales=16 does not divide head_dim=40" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_module_entry():
    out = subprocess.run([sys.executable, "-m", "hf_wavepos.cli", "basis"], capture_output=True, text=True, check=True)
    assert "8 scales x 8 shifts" in out.stdout


def test_train_overrides_and_options_in_any_order(capsys):
    """Overrides after an option reach the recipe (here: a bad value it rejects by name)."""
    from hf_wavepos.cli import _parse, build_parser

    parser = build_parser()
    for argv in (["train", "c.yaml", "a.b=1", "--recipe", "continue", "c.d=2"],
                 ["train", "c.yaml", "--recipe", "continue", "a.b=1", "c.d=2"],
                 ["train", "--recipe", "continue", "c.yaml", "a.b=1", "c.d=2"]):
        args = _parse(parser, argv)
        assert (args.config, args.recipe, args.overrides) == ("c.yaml", "continue", ["a.b=1", "c.d=2"])
    with pytest.raises(SystemExit) as exit_:
        main(["train", "recipes/configs/tiny_cpu.yaml", "--recipe", "pretrain", "train.max_stepz=3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "max_stepz" in err and "unrecognized" not in err
    with pytest.raises(SystemExit):
        main(["train", "c.yaml", "--recipe", "continue", "--bogus", "a=1"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["basis", "--preset", "long", "x=1"])
    assert "unrecognized arguments: x=1" in capsys.readouterr().err


def test_bench_methods_help_says_what_each_bench_expects(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "conversion", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "POSITION:RECIPE" in text and "rope:plain,long:transfer" in text and "rope,long,alibi" not in text
    with pytest.raises(SystemExit):
        main(["bench", "extrapolation", "--help"])
    assert "rope,long,alibi" in " ".join(capsys.readouterr().out.split())
