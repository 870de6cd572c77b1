"""Fused Triton kernels for wavelet attention (Eq. 10): forward, backward and decoding.

    e[m, n] = ( q_m . k_n + q_m . p[m - n] ) * scaling,   out_m = sum_n softmax_n(e) v_n

The kernels are FlashAttention-2 (online softmax in base 2, one program per query block in the
forward and for dq, one per key block for dk/dv, logits recomputed from a saved log-sum-exp),
so memory is O(L) and nothing L x L exists. What is new is the positional term, handled with
three pieces of structure:

1. **Skewed blocks.** A tile pairs BLOCK queries (rows i, positions m0 + i) with BLOCK keys
   (columns j, positions n0 + j); its distances are delta + i - j, delta = m0 - n0. They fall
   in two aligned blocks of table rows: hi = p[delta .. delta + BLOCK - 1] (entries with
   i >= j, at t = i - j) and lo = p[delta - BLOCK .. delta - 1] (i < j, at t = BLOCK + i - j).
   With QP_hi = Q_blk @ hi^T and QP_lo = Q_blk @ lo^T (BLOCK x BLOCK each, tensor-core dots)
   the tile's term is one register gather, [i, j] -> QP_{hi|lo}[i, (i - j) mod BLOCK].

2. **Carried blocks.** Walking the key tiles left to right moves delta down by BLOCK, so the
   lo block of one tile is the hi block of the next: the forward and dq kernels compute *one*
   new BLOCK x BLOCK x D dot per tile (the cost of q.k) and carry the other in registers. In
   the dq kernel the gradient dS is un-skewed the same way, the two halves of a block are
   summed across consecutive tiles, and each block contributes one dot, g @ p[block], to dq.
   The dk/dv kernel walks query blocks (different queries each step) and recomputes both.
   p is fixed: there is no gradient for the table, k receives only the content gradient.

3. **Supports (the two regimes).** Only entries with |p| >= 1e-6 may matter (METHOD.md).
   The head dimension is cut into chunks of CHUNK columns and each chunk gets its support
   (`support.chunk_supports`: one more than its last significant row), sorted ascending.
   A block of distances starting at d needs only the chunks whose support exceeds d, found
   with one comparison; the dot runs over those chunks only, and a tile whose distances all
   lie beyond every support is a plain FlashAttention tile (no table access at all).
   - Small scales (``oka2025``, ``oka2025-4k``): the term is confined to a band of ~ 6 x the
     largest scale (~2.9k tokens for ``oka2025-4k``, D = 128). Tiles left of it cost the same
     as SDPA; inside it the large-scale chunks dominate, so on average far fewer than D
     columns are dotted.
   - Large scales (``long``, up to 2^15): the term is smooth and reaches every distance, but
     the small-scale chunks drop out after a few hundred tokens: past ~700 tokens only the
     chunks of scales >= 256 remain, past ~11.5k only those >= 4096. The kernels never
     approximate the smooth part (the exact formula is the definition); they skip exactly
     the chunks that are zero to 1e-6, which is where the large-scale structure pays.

Decoding (few queries over a long cache, no gradient) uses a split-K kernel with a positional
*window* per key tile instead of carried blocks; see `decode`.

Entry points: `triton_backend` (the ``triton`` backend of `hf_wavepos.wavepos_attention`: it
takes the validated `AttentionCall`; autograd through ``torch.library`` custom ops, so
``torch.compile`` sees one opaque op), its direct-call wrapper `triton_attention`, and
`triton_decode_attention`. Supported: float16 / bfloat16 / float32, head sizes up to 256
(float32: 128; padded to a power of two >= 16), causal, grouped-query attention, key padding,
packed documents, query offsets (KV caches, static caches), and q, k, v as any views with a
unit last stride (`launch` states the layout rules).

Module map: `configs` (the one table of tile configurations per GPU target, dtype and head dim,
and the validation of tile arguments), `launch` (launches as data, output layouts), `forward` /
`backward` / `decode` (kernels and their launch plans), `ops` (custom ops, entry points),
`compile_check` (ahead-of-time compiles for sm_80 / sm_90 without a GPU: registers, spills,
shared memory), `selfcheck` (the first-use check of the dispatcher's ``triton`` backend).

Kernels run on CUDA; with ``TRITON_INTERPRET=1`` set before triton is first imported
(``import hf_wavepos`` imports it through ``torch._dynamo``) they also run (slowly) on CPU
tensors, which is how CI tests them. The interpreter cannot multiply bfloat16
(triton-lang/triton#11584), so CPU tests use float32 and float16; bfloat16 is tested on GPU. The
interpreter also ignores register and shared-memory budgets and dot precisions: what only a GPU
compile shows is covered by `compile_check`.
"""

from hf_wavepos.attention.triton.configs import KernelConfigs, TileConfig, configs_for, target_of
from hf_wavepos.attention.triton.ops import (
    interpreter_ready,
    interpreting,
    kernel_configs,
    triton_attention,
    triton_backend,
    triton_decode_attention,
)

__all__ = [
    "KernelConfigs",
    "TileConfig",
    "configs_for",
    "interpreter_ready",
    "interpreting",
    "kernel_configs",
    "target_of",
    "triton_attention",
    "triton_backend",
    "triton_decode_attention",
]
