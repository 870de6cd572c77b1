"""The one place where an attention backend is chosen.

`wavepos_attention` validates the call once and hands it to a backend from a registry:

    reference  materialised, exact in float64 (tests, ``attn_implementation="eager"``)
    chunked    query-chunked, O(chunk x Lk) memory, recomputing backward (CPU default)

GPU backends (FlexAttention, Triton) are registered by `hf_wavepos.attention.gpu`, not here,
so that the bundled remote code carries only the portable ones.
Choose explicitly with ``backend=...``, or for a block of code with `use_backend` (tests).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from hf_wavepos.attention.chunked import chunked_attention
from hf_wavepos.attention.reference import reference_attention

AttentionFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """A registered backend: ``fn`` has `wavepos_attention`'s signature; ``supports(device)``.

    ``accepts`` names the optional arguments (``attn_mask``, ``alibi_slopes``) it implements.
    """

    name: str
    fn: AttentionFn
    supports: Callable[[torch.device], bool]
    priority: int
    accepts: frozenset[str] = frozenset()


_BACKENDS: dict[str, Backend] = {}
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("wavepos_backend", default=None)


def register_backend(
    name: str,
    fn: AttentionFn,
    *,
    supports: Callable[[torch.device], bool],
    priority: int = 0,
    accepts: tuple[str, ...] = (),
    overwrite: bool = False,
) -> None:
    """Register an attention backend; the supported one with the highest priority is the default.

    ``accepts`` lists which optional arguments (``attn_mask``, ``alibi_slopes``) ``fn`` takes;
    calls using others are refused with an error naming the backends that can serve them.

    Raises:
        ValueError: ``name`` is already registered and ``overwrite`` is False.
    """
    if name in _BACKENDS and not overwrite:
        raise ValueError(f"attention backend {name!r} is already registered; pass overwrite=True to replace it.")
    _BACKENDS[name] = Backend(name, fn, supports, priority, frozenset(accepts))


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Names of registered backends (those supporting ``device`` when given), best first."""
    backends = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    if device is None:
        return [b.name for b in backends]
    device = torch.device(device)
    return [b.name for b in backends if b.supports(device)]


def default_backend(device: torch.device | str) -> str:
    """The backend `wavepos_attention` uses on ``device`` when none is forced."""
    names = available_backends(device)
    if not names:
        raise RuntimeError(f"no wavepos attention backend supports device {device}.")
    return names[0]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` for every `wavepos_attention` call in this block (and this context)."""
    _check_name(name)
    token = _OVERRIDE.set(name)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def _check_name(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown wavepos attention backend {name!r}; allowed values: {', '.join(_BACKENDS)}."
        ) from None


def wavepos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    *,
    scaling: float | None = None,
    q_offset: int | torch.Tensor = 0,
    key_padding_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal attention with the wavelet relative term, e = (q.k + q.p[m-n]) * scaling (Eq. 10).

    Args:
        q: (B, H, Lq, D) queries (no rotary embedding).
        k, v: (B, Hkv, Lk, D); H must be a multiple of Hkv (grouped-query attention).
        table: (R, D), R >= q_offset + Lq: p[r] from `hf_wavepos.basis.wavelet_table`.
        scaling: logit scale, default 1/sqrt(D).
        q_offset: absolute position of query 0, i.e. the number of cached keys before it;
            Lq = 1 with q_offset = Lk - 1 is one decoding step.
        key_padding_mask: (B, Lk) bool, True for real tokens (left padding, static caches).
        document_ids: (B, Lk) ints; queries attend only to keys of their own document.
        attn_mask: (B|1, 1, Lq, Lk) bool, any further visibility rule (True = may attend);
            O(Lq x Lk) memory, so prefer the compact masks above where they suffice.
        alibi_slopes: (H,) ALiBi slopes (the peer method): adds -slope_h * (m - n).
        backend: force a backend by name; default: `use_backend` if active, else the best
            backend for q's device.

    Returns:
        (B, H, Lq, D) in q's dtype.
    """
    name = backend or _OVERRIDE.get() or default_backend(q.device)
    chosen = _check_name(name)
    if not chosen.supports(q.device):
        raise ValueError(
            f"attention backend {name!r} does not support device {q.device}; available there: "
            f"{', '.join(available_backends(q.device))}."
        )
    optional = {"attn_mask": attn_mask, "alibi_slopes": alibi_slopes}
    extra = {key: value for key, value in optional.items() if value is not None}
    unsupported = sorted(set(extra) - chosen.accepts)
    if unsupported:
        able = [b.name for b in _BACKENDS.values() if set(extra) <= b.accepts]
        raise ValueError(
            f"attention backend {name!r} does not support {', '.join(unsupported)}; backends that do: "
            f"{', '.join(able)}."
        )
    return chosen.fn(
        q, k, v, table, scaling=scaling, q_offset=q_offset,
        key_padding_mask=key_padding_mask, document_ids=document_ids, **extra,
    )


OPTIONAL_INPUTS = ("attn_mask", "alibi_slopes")
register_backend("reference", reference_attention, supports=lambda device: True, priority=0, accepts=OPTIONAL_INPUTS)
register_backend("chunked", chunked_attention, supports=lambda device: True, priority=10, accepts=OPTIONAL_INPUTS)

