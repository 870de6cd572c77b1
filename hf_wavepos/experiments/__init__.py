"""Experiments built on the library: the benchmarks comparing position methods and the demo.

- `hf_wavepos.experiments.extrapolation`: ``wavepos bench extrapolation`` (perplexity by length)
- `hf_wavepos.experiments.retrieval`: ``wavepos bench retrieval`` (passkey accuracy by length)
- `hf_wavepos.experiments.conversion`: ``wavepos bench conversion`` (convert a pretrained RoPE model, recalibrate, compare)
- `hf_wavepos.experiments.demo`: ``wavepos demo`` (the extrapolation benchmark at demo size + a Hub folder)
- `hf_wavepos.experiments.attention_speed`: CPU speed and memory of the attention paths (training, decoding)
- `hf_wavepos.experiments.model_speed`: CPU speed and memory of a SmolLM2-135M-shaped model, wavepos vs stock
- `hf_wavepos.experiments.basis_plot`: the plot behind ``wavepos basis --plot``
- `hf_wavepos.experiments.bench_configs`: the shipped benchmark settings (``configs/*.yaml``)
"""
