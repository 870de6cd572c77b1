"""The one place where an attention backend is chosen.

`wavepos_attention` validates the call once (`hf_wavepos.attention.contract.attention_call`) and
hands the resulting `AttentionCall` to a backend from a registry; a backend is ``fn(call)``:

    reference  materialised, exact in float64 (tests, ``attn_implementation="eager"``); the
               only one that can also return the attention probabilities
               (`wavepos_attention_with_probabilities`)
    chunked    query-chunked, O(chunk x Lk) memory, recomputing backward (CPU default)

GPU backends (FlexAttention, Triton) are registered by `hf_wavepos.attention.gpu`, not here,
so that the bundled remote code carries only the portable ones.
Choose explicitly with ``backend=...``, or for a block of code with `use_backend` (tests).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.attention.reference import reference_backend, reference_with_probabilities

BackendFn = Callable[[AttentionCall], torch.Tensor]
OPTIONAL_INPUTS = ("attn_mask", "alibi_slopes")


@dataclass(frozen=True)
class Backend:
    """A registered backend: ``fn(call)`` computes one validated call; ``supports(device)``.

    ``accepts`` names the optional inputs (``attn_mask``, ``alibi_slopes``) it implements.
    """

    name: str
    fn: BackendFn
    supports: Callable[[torch.device], bool]
    priority: int
    accepts: frozenset[str] = frozenset()


_BACKENDS: dict[str, Backend] = {}
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("wavepos_backend", default=None)


def register_backend(
    name: str,
    fn: BackendFn,
    *,
    supports: Callable[[torch.device], bool],
    priority: int = 0,
    accepts: tuple[str, ...] = (),
    overwrite: bool = False,
) -> None:
    """Register an attention backend; the supported one with the highest priority is the default.

    Args:
        name: registry key, the value of ``backend=`` and `use_backend`.
        fn: ``fn(call: AttentionCall) -> (B, H, Lq, D)``; it receives validated inputs only.
        supports: ``supports(device) -> bool``, where the backend can run.
        priority: the default on a device is its supported backend with the highest priority.
        accepts: which optional inputs (``attn_mask``, ``alibi_slopes``) ``fn`` implements;
            calls using others are refused with an error naming the backends that can serve them.
        overwrite: allow replacing an existing entry.

    Raises:
        ValueError: if ``name`` is taken (and not ``overwrite``) or ``accepts`` names an unknown input.
    """
    if name in _BACKENDS and not overwrite:
        raise ValueError(f"attention backend {name!r} is already registered; pass overwrite=True to replace it.")
    unknown = sorted(set(accepts) - set(OPTIONAL_INPUTS))
    if unknown:
        raise ValueError(f"accepts names unknown inputs {unknown}; allowed values: {', '.join(OPTIONAL_INPUTS)}.")
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


def get_backend(name: str) -> Backend:
    """The registry entry for ``name``; ValueError listing the registered names otherwise."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown wavepos attention backend {name!r}; allowed values: {', '.join(_BACKENDS)}."
        ) from None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` for every `wavepos_attention` call in this block (and this context)."""
    get_backend(name)
    token = _OVERRIDE.set(name)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def wavepos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    *,
    backend: str | None = None,
    **contract: Any,
) -> torch.Tensor:
    """Causal attention with the wavelet relative term, e = (q.k + q.p[m-n]) * scaling (Eq. 10).

    Args:
        q: (B, H, Lq, D) queries (no rotary embedding).
        k, v: (B, Hkv, Lk, D); H must be a multiple of Hkv (grouped-query attention).
        table: (R, D), R >= q_offset + Lq: p[r] from `hf_wavepos.basis.wavelet_table`.
        backend: force a backend by name; default: `use_backend` if active, else the best
            backend for q's device.
        **contract: the optional keywords of the contract, each documented on
            `hf_wavepos.attention.contract.AttentionCall`: ``scaling`` (default 1/sqrt(D)),
            ``q_offset`` (cached keys before query 0), ``key_padding_mask`` (B, Lk) bool,
            ``document_ids`` (B, Lk) ints, ``attn_mask`` (B|1, 1, Lq, Lk) bool, ``alibi_slopes`` (H,).

    Returns:
        (B, H, Lq, D) in q's dtype; rows that see no key are zero.

    Raises:
        ValueError: for invalid inputs (naming the argument and the fix), an unknown backend, or
            a backend that does not run on q's device or lacks an optional input the call uses.
    """
    call = attention_call(q, k, v, table, **contract)
    return _choose(backend, call).fn(call)


def wavepos_attention_with_probabilities(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, **contract: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """`wavepos_attention` by the ``reference`` backend, the one that materialises the attention
    probabilities, returning them too (``output_attentions=True`` of ``attn_implementation="eager"``).

    Args:
        q, k, v, table, **contract: as `wavepos_attention`.

    Returns:
        out (B, H, Lq, D) and probs (B, H, Lq, Lk), in q's dtype (rows that see no key are 0).

    Raises:
        ValueError: for invalid inputs, as `wavepos_attention`.
    """
    return reference_with_probabilities(attention_call(q, k, v, table, **contract))


def _choose(backend: str | None, call: AttentionCall) -> Backend:
    """The backend that serves ``call``: forced by name or `use_backend`, else the device default."""
    device = call.q.device
    name = backend or _OVERRIDE.get() or default_backend(device)
    chosen = get_backend(name)
    if not chosen.supports(device):
        raise ValueError(
            f"attention backend {name!r} does not support device {device}; available there: "
            f"{', '.join(available_backends(device))}."
        )
    unsupported = sorted(set(call.optional_inputs()) - chosen.accepts)
    if unsupported:
        able = [b.name for b in _BACKENDS.values() if set(call.optional_inputs()) <= b.accepts]
        raise ValueError(
            f"attention backend {name!r} does not support {', '.join(unsupported)}; backends that do: "
            f"{', '.join(able)}."
        )
    return chosen


register_backend("reference", reference_backend, supports=lambda device: True, priority=0, accepts=OPTIONAL_INPUTS)
register_backend("chunked", chunked_backend, supports=lambda device: True, priority=10, accepts=OPTIONAL_INPUTS)
