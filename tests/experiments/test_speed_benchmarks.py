"""The CPU speed benchmarks (attention, SmolLM2-shaped model) at tiny sizes: what their JSON holds."""

import json
import os

import pytest
import torch

from hf_wavepos.experiments import attention_speed, model_speed
from hf_wavepos.machine import CPU_FLAGS, cpu_record, cpu_slug


@pytest.fixture(autouse=True)
def keep_threads():
    """The benchmarks set torch's thread count: give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_record_names_the_machine():
    record = cpu_record()
    assert record["cpu"] and record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    assert set(record["cpu_flags"]) <= set(CPU_FLAGS) and record["load_average_1min"] >= 0
    assert cpu_slug().replace("_", "").isalnum()


def _busy_pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the under-load mode needs two cores")
def test_attention_benchmark_quiet_and_under_load(tmp_path, monkeypatch):
    started = []
    real_popen = attention_speed.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(attention_speed.subprocess, "Popen", popen)
    out = tmp_path / "a.json"
    attention_speed.main(["--length", "128", "--heads", "2", "--head-dim", "16", "--repeats", "1",
                          "--decode-length", "256", "--decode-repeats", "2", "--presets", "oka2025",
                          "--no-memory", "--under-load", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and "cpu_flags" in report["machine"]
    quiet = report["quiet"]["oka2025"]
    assert set(quiet["training"]["ratio_vs_sdpa"]) == {"sdpa", "dense_bias", "chunked"}
    assert quiet["training"]["ratio_vs_sdpa"]["sdpa"] == 1.0 and quiet["decode"]["ratio_vs_sdpa"]["chunked"] > 0
    loaded = report["under_load"]
    growth = loaded["ratio_under_load_over_quiet"]["oka2025"]["training"]
    want = loaded["results"]["oka2025"]["training"]["ratio_vs_sdpa"]["chunked"] / quiet["training"]["ratio_vs_sdpa"]["chunked"]
    assert growth == pytest.approx(want)
    assert len(started) == 1 and _busy_pid_gone(started[0].pid)  # the busy process is stopped


@pytest.mark.slow
def test_model_benchmark_times_and_measures_every_model(tmp_path):
    out = tmp_path / "m.json"
    model_speed.main(["--layers", "1", "--presets", "long", "--train-lengths", "64", "--score-lengths", "64",
                      "--repeats", "1", "--no-warmup", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["model"]["num_hidden_layers"] == 1 and report["model"]["num_key_value_heads"] == 3
    for mode in ("training", "scoring"):
        entry = report["results"][mode]["64"]
        assert set(entry["ratio_vs_stock"]) == {"stock", "wavepos_long"} and entry["ratio_vs_stock"]["stock"] == 1.0
        assert entry["peak_rss_growth_mib"]["stock"] > 0 and entry["memory_ratio_vs_stock"]["wavepos_long"] > 0


@pytest.mark.slow
def test_model_benchmark_memory_only(tmp_path):
    out = tmp_path / "m.json"
    model_speed.main(["--layers", "1", "--presets", "long", "--train-lengths", "64", "--score-lengths",
                      "--no-speed", "--threads", "1", "--out", str(out)])
    entry = json.loads(out.read_text())["results"]["training"]["64"]
    assert "ratio_vs_stock" not in entry and entry["memory_ratio_vs_stock"]["stock"] == 1.0
    with pytest.raises(SystemExit):
        model_speed.parse_args(["--no-speed", "--no-memory"])


def test_model_benchmark_builds_smollm2_shapes():
    stock, wavepos = (model_speed.build_model(name, layers=1) for name in ("stock", "wavepos_oka2025"))
    assert stock.config.model_type == "llama" and wavepos.config.model_type == "wavepos_llama"
    assert stock.model.layers[0].self_attn.k_proj.out_features == 3 * 64 and stock.config.tie_word_embeddings
    for a, b in zip(stock.parameters(), wavepos.parameters()):
        assert torch.equal(a, b)  # the same weights: only the positions differ
