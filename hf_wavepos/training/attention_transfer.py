"""Attention transfer: recalibrate a converted model layer by layer against its stock self.

Right after `hf_wavepos.apply_wavepos` removes RoPE, every attention layer computes a different
function of the same input, and the errors of 30 layers compound: SmolLM2-135M goes from a
held-out perplexity of about 13 to about 220. Next-token loss, and even distillation of the
output distribution, repair this slowly, because the signal reaches each layer only through all
the layers above it. Attention transfer (Zhang et al., "LoLCATs: On Low-Rank Linearizing of Large
Language Models", ICLR 2025, Sec. 3.1, where it swaps softmax attention for linear attention)
gives every layer its own dense target instead: the converted attention of layer l is trained to
reproduce the stock attention's output on the stock model's own hidden states,

    loss = (1 / n) x sum_l  mean( (A'_l(h_l) - A_l(h_l))^2 ) / mean( A_l(h_l)^2 )

with h_l the input of layer l's attention in the teacher's forward pass (B, L, hidden), A_l the
stock attention (with its RoPE) and A'_l the converted one, over the n attention layers. The
student runs on the teacher's residual stream: each converted attention reads the teacher's input
and passes the teacher's output on, so every layer learns from exact inputs and no gradient
crosses layers (a step costs a teacher forward, a student forward and one attention backward per
layer). Only the projections that form queries and keys are trained by default
(`hf_wavepos.models.registry.Architecture.query_key_modules`): a position method acts there.

GPT-2's stock hidden states carry its learned absolute positions (``wpe``), which the converted
model no longer adds; the transfer still matches the attention outputs, on inputs the converted
model will not see exactly.

The training loop uses it through ``distill.target: attention`` (`hf_wavepos.training.distill`).
"""

from __future__ import annotations

from typing import Any

import torch

from hf_wavepos.models.registry import architecture_of


def attention_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention module of every layer, by qualified name (``model.layers.3.self_attn``).

    Works on stock and wavepos models of a registered architecture (the wavepos attention class
    subclasses the stock one) and on models wrapped by PEFT or Accelerate (the wrapper's prefix is
    dropped, so a stock and a wrapped converted model give the same names).

    Raises:
        ValueError: the model has no attention module of its architecture.
    """
    arch = architecture_of(_config(model).model_type)
    stock_attention = tuple(s for s, new in arch.class_map.items() if new not in (arch.base_class, arch.causal_lm_class))
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, stock_attention):
            found[_strip_wrappers(name)] = module
    if not found:
        raise ValueError(f"{type(model).__name__} has no {arch.name} attention module to transfer.")
    return found


def freeze_except(model: torch.nn.Module, names: tuple[str, ...] | list[str]) -> int:
    """Train only the parameters of modules whose last name component is in ``names``.

    Args:
        model: any module.
        names: module names such as ``("q_proj", "k_proj")``.

    Returns:
        The number of trainable parameters left.

    Raises:
        ValueError: no module of the model has one of ``names`` (naming those that exist).
    """
    wanted, matched = set(names), 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        keep = any(part in wanted for part in parts[:-1])
        param.requires_grad_(keep)
        matched += param.numel() if keep else 0
    if matched == 0:
        known = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ValueError(f"distill.trainable={list(names)} matches no module of {type(model).__name__}; "
                         f"module names include {', '.join(known[:20])}.")
    return matched


class AttentionTransfer:
    """Layer-wise attention-output matching between a frozen teacher and a converted student.

    Hooks are installed on both models once; they act only inside `micro_batch_loss`, so
    evaluation, generation and saving of the student are untouched. `close` removes them.

    Attributes:
        teacher: the stock model (eval mode, no gradients).
        names: the matched attention layers, in order.
    """

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module):
        self.teacher = teacher.eval().requires_grad_(False)
        teacher_layers, student_layers = attention_layers(teacher), attention_layers(student)
        if list(teacher_layers) != list(student_layers):
            raise ValueError(f"distill.teacher's attention layers {list(teacher_layers)[:3]}... differ from the "
                             f"model's {list(student_layers)[:3]}...: the teacher must be the same architecture and size.")
        self.names = list(student_layers)
        self._inputs: dict[str, torch.Tensor] = {}
        self._targets: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = []
        for name in self.names:
            self._handles += [
                teacher_layers[name].register_forward_pre_hook(self._record_input(name), with_kwargs=True),
                teacher_layers[name].register_forward_hook(self._record_target(name), with_kwargs=True),
                student_layers[name].register_forward_pre_hook(self._feed_input(name), with_kwargs=True),
                student_layers[name].register_forward_hook(self._pass_target(name), with_kwargs=True),
            ]

    def micro_batch_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], targets: int) -> torch.Tensor:
        """The transfer loss of one micro-batch, scaled like the loop's summed losses.

        Args:
            model: the student as the loop holds it (possibly wrapped by Accelerate).
            batch: ``input_ids``, ``position_ids``: (B, L).
            targets: the micro-batch's scored tokens (`hf_wavepos.training.losses.count_targets`); the
                loop divides by the global batch's count, so the returned value is the loss above
                times ``targets``.

        Returns:
            Scalar float32 with gradients into the student's trainable attention parameters.
        """
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        with torch.no_grad():
            self.teacher.base_model(**inputs)  # the hooks record every layer's input and output
        self._active = True
        try:
            model(**inputs, logits_to_keep=1)  # the loss needs no logits: skip the output layer's (B, L, vocab)
        finally:
            self._active = False
        terms = [((self._outputs[n].float() - self._targets[n].float()) ** 2).mean()
                 / self._targets[n].float().pow(2).mean().clamp_min(1e-12) for n in self.names]
        self._inputs.clear(), self._targets.clear(), self._outputs.clear()
        return torch.stack(terms).mean() * targets

    def close(self) -> None:
        """Remove the hooks from both models."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ----------------------------------------------------------------------------------- hooks
    def _record_input(self, name: str):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            self._inputs[name] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach()
        return hook

    def _record_target(self, name: str):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            self._targets[name] = _first(output).detach()
        return hook

    def _feed_input(self, name: str):
        def hook(module: Any, args: tuple, kwargs: dict) -> tuple | None:
            if not self._active:
                return None
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": self._inputs[name]}
            return (self._inputs[name], *args[1:]), kwargs
        return hook

    def _pass_target(self, name: str):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
            if not self._active:
                return None
            self._outputs[name] = _first(output)
            return (self._targets[name], *output[1:]) if isinstance(output, tuple) else self._targets[name]
        return hook


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _config(model: torch.nn.Module) -> Any:
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module  # DistributedDataParallel and similar wrappers
    return model.config


def _strip_wrappers(name: str) -> str:
    """``base_model.model.model.layers.0.self_attn`` / ``module.model.layers.0...`` -> ``model.layers.0...``
    (PEFT and DDP prefixes), and the causal LM's base-model prefix is kept as stock models name it."""
    for prefix in ("module.", "base_model.model."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name
