"""First-use self-check of a fast attention backend against a verified one.

The Triton kernels are compile-checked for sm_80 / sm_90 in CI and tested through Triton's
interpreter on the CPU, but a GPU, driver or Triton release can still differ. So the first call
of each *kind* in a process runs both backends on a small problem of that kind and compares them:

    kind = (device, dtype, head dim, position method, kernel path, grouped-query factor, masks)

position method: ``alibi`` (slopes given) or ``table`` (the call's own table rows, so a wavelet
table is checked as such and an all-zero NoPE table as NoPE); kernel path: ``decode`` (the
split-K kernel: few queries, no gradient), ``forward``, or ``backward`` (forward and every
gradient, when the call needs gradients); masks: which of key padding, document ids and a dense
mask the call uses (each is a compiled variant of the kernels).

The small problem (B = 2, Hkv = 2, `CHECK_LENGTH` keys, the call's scaling, its table rows
zero-padded to the length, masks and ALiBi slopes of the same kinds) is computed by the fast
backend in the call's dtype, by plain PyTorch (`reference_backend`) in that dtype and by the
verified backend in float64. The fast backend passes when its error, for the output and every
gradient, is at most twice plain PyTorch's plus a floor (the FlashAttention rule the tests use).
On a failure (or an exception) it warns once with `SelfCheckWarning`, naming both backends, and
every call of that kind in the process uses the verified backend. Calls the fast backend does not
serve at all (``unserved``: e.g. float64, or float32 at head dim 256) go to the verified backend
with one such warning per (dtype, head dim).

The check runs eagerly: while ``torch.compile`` traces (``torch.compiler.is_compiling()``) a kind
that was not checked yet goes to the fast backend unchecked, and one already judged keeps its
verdict. It costs one small problem per kind and process (a few milliseconds on a GPU, plus the
compiles the real call needs anyway).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.attention.reference import reference_backend
from hf_wavepos.attention.triton.configs import unserved
from hf_wavepos.attention.triton.ops import DECODE_MAX_QUERIES, DECODE_MAX_ROWS, triton_backend

CHECK_LENGTH = 150  # keys of the check problem: two 64-tiles and a partial one
CHECK_LENGTH_CPU = 40  # under TRITON_INTERPRET (tests): tiles of 16
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-3}  # absolute slack per dtype


class SelfCheckWarning(RuntimeWarning):
    """A backend failed its first-use check; calls of that kind use the verified backend."""


BackendFn = Callable[[AttentionCall], torch.Tensor]


class FirstUseCheck:
    """A backend ``fn(call)`` (the dispatcher's signature) that checks ``fast`` on first use.

    Args:
        fast: the backend ``fn(call)`` to check (e.g. `triton_backend`).
        verified: the backend ``fn(call)`` to compare with and fall back to (e.g. `chunked_backend`).
        fast_name, verified_name: their names in the warning.
        unserved: (dtype, head_dim) -> why ``fast`` does not serve such calls, or None.

    Attributes:
        verdicts: kind -> True (fast passed) / False (fell back); see the module docstring.
    """

    def __init__(self, fast: BackendFn, verified: BackendFn, fast_name: str, verified_name: str,
                 unserved: Callable[[torch.dtype, int], str | None] = lambda dtype, head_dim: None):
        self.fast, self.verified = fast, verified
        self.fast_name, self.verified_name = fast_name, verified_name
        self.unserved = unserved
        self.verdicts: dict[tuple, bool] = {}

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """Attention of one validated call by ``fast`` (``verified`` for kinds that failed their
        check): (B, H, Lq, D) in q's dtype; raises what they raise."""
        q = call.q
        reason = self.unserved(q.dtype, call.head_dim)
        if reason is not None:
            if (q.dtype, call.head_dim) not in self.verdicts and not torch.compiler.is_compiling():
                self.verdicts[(q.dtype, call.head_dim)] = False
                warnings.warn(
                    f"hf_wavepos: the {self.fast_name!r} attention backend does not serve {reason}; such calls "
                    f"use the {self.verified_name!r} backend.", SelfCheckWarning, stacklevel=2,
                )
            return self.verified(call)
        key = self.kind(call)
        verdict = self.verdicts.get(key)
        if verdict is None:
            if torch.compiler.is_compiling():
                return self.fast(call)  # unchecked: never check inside a trace
            verdict = self.verdicts[key] = self._check(key, call)
        return (self.fast if verdict else self.verified)(call)

    @staticmethod
    def kind(call: AttentionCall) -> tuple:
        """The key of a call: (device, dtype, head_dim, method, path, groups, masks)."""
        q, k, v = call.q, call.k, call.v
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if needs_grad:
            path = "backward"
        elif call.q_len <= DECODE_MAX_QUERIES and call.groups * call.q_len <= DECODE_MAX_ROWS:
            path = "decode"
        else:
            path = "forward"
        method = "alibi" if call.alibi_slopes is not None else "table"
        masks = tuple(mask is not None for mask in (call.key_padding_mask, call.document_ids, call.attn_mask))
        return (str(q.device), q.dtype, call.head_dim, method, path, call.groups, masks)

    def _check(self, key, call: AttentionCall) -> bool:
        device, dtype, head_dim, method, path, groups, (has_pad, has_doc, has_mask) = key
        try:
            worst = self._compare(call, path, groups, has_pad, has_doc, has_mask, method)
        except Exception as error:  # noqa: BLE001 - any failure of the fast backend means: do not use it
            worst = f"it raised {type(error).__name__}: {error}"
        if worst is None:
            return True
        warnings.warn(
            f"hf_wavepos: the {self.fast_name!r} attention backend failed its first-use check on {device} "
            f"({dtype}, head_dim {head_dim}, {method}, {path}, {groups} query heads per kv head, masks "
            f"pad/doc/dense={has_pad}/{has_doc}/{has_mask}): {worst}. Calls of this kind in this process use "
            f"the {self.verified_name!r} backend instead (correct, slower). Please report this with your GPU "
            "and triton version.",
            SelfCheckWarning, stacklevel=3,
        )
        return False

    def _compare(self, call: AttentionCall, path, groups, has_pad, has_doc, has_mask, method) -> str | None:
        """None when ``fast`` is within twice plain PyTorch's error on the check problem, else why not."""
        q, table = call.q, call.table
        device, dtype, D = q.device, q.dtype, call.head_dim
        Lk = CHECK_LENGTH if device.type == "cuda" else CHECK_LENGTH_CPU
        Lq = min(q.shape[2], DECODE_MAX_QUERIES) if path == "decode" else Lk
        B, Hkv = 2, 2
        H = Hkv * groups
        gen = torch.Generator(device=device).manual_seed(0)
        q64, k64, v64 = (torch.randn(B, h, n, D, generator=gen, device=device, dtype=torch.float64)
                         for h, n in ((H, Lq), (Hkv, Lk), (Hkv, Lk)))
        rows = table.detach()[:Lk].to(torch.float64)
        table64 = torch.cat([rows, rows.new_zeros(Lk - rows.shape[0], D)]) if rows.shape[0] < Lk else rows
        extra = dict(scaling=call.scaling, q_offset=Lk - Lq)
        if has_pad:
            pad = torch.ones(B, Lk, dtype=torch.bool, device=device)
            pad[1, : Lk // 5] = False
            extra["key_padding_mask"] = pad
        if has_doc:
            docs = torch.zeros(B, Lk, dtype=torch.long, device=device)
            docs[:, (3 * Lk) // 5:] = 1
            extra["document_ids"] = docs
        if has_mask:
            extra["attn_mask"] = torch.rand(B, 1, Lq, Lk, generator=gen, device=device) > 0.2
        if method == "alibi":
            slopes = call.alibi_slopes.detach().to(torch.float64)
            extra["alibi_slopes"] = slopes[torch.arange(H, device=device) % slopes.shape[0]]
        upstream = torch.randn(B, H, Lq, D, generator=gen, device=device, dtype=torch.float64)

        def run(fn, dt):
            cast = {key: val.to(dt) if torch.is_tensor(val) and val.is_floating_point() else val
                    for key, val in extra.items()}
            inputs = [t.to(dt).requires_grad_(path == "backward") for t in (q64, k64, v64)]
            with torch.set_grad_enabled(path == "backward"):
                out = fn(attention_call(*inputs, table64.to(dt), **cast))
                grads = torch.autograd.grad(out, inputs, upstream.to(dt)) if path == "backward" else ()
            return [t.detach().double() for t in (out, *grads)]

        truth = run(self.verified, torch.float64)
        plain = run(reference_backend, dtype)
        ours = run(self.fast, dtype)
        for name, t, p, o in zip(("output", "dq", "dk", "dv"), truth, plain, ours):
            error, bound = (o - t).abs().max().item(), 2 * (p - t).abs().max().item() + FLOOR[dtype]
            if not error <= bound:  # also catches NaN
                return (f"{name} differs from the float64 {self.verified_name!r} result by {error:.3g} "
                        f"(bound {bound:.3g})")
        return None


# The ``triton`` backend of the dispatcher (registered in `hf_wavepos.attention.gpu`).
checked_triton_backend = FirstUseCheck(triton_backend, chunked_backend, "triton", "chunked", unserved)
