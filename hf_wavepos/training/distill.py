"""Self-distillation for recalibrating a converted checkpoint (the ``distill`` section of an experiment).

A checkpoint whose RoPE was just removed predicts far worse; next-token labels give one target per
position. The stock model's own next-token distribution on the same block is a far denser signal
(Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"): the student (converted)
model is trained towards the teacher (the same weights with their original positions) at a length
the teacher handles. The loss of a micro-batch becomes

    weight x T^2 x sum_i KL( softmax(t_i / T) || softmax(s_i / T) )  +  (1 - weight) x sum_i CE(s_i, y_i)

summed over the same predicted positions i as `hf_wavepos.training.losses.token_loss_sum` (the loop
divides by the global batch's target count, so the scale of both terms matches the plain loss).

With ``distill.target: attention`` the objective is attention transfer instead
(`hf_wavepos.training.attention_transfer`): every attention layer matches the teacher's.

The loop calls two things: `build_distiller` once (None when ``distill.enabled`` is false) and
``micro_batch_loss(model, batch, targets)`` per micro-batch, in place of the plain summed loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hf_wavepos.data.packing import IGNORE_INDEX
from hf_wavepos.sources import loading
from hf_wavepos.training.experiment_config import TrainConfig
from hf_wavepos.training.losses import token_loss_sum

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def distill_kl_sum(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Summed KL(teacher || student) of the next-token distributions at the labelled positions.

    Args:
        student: (B, L, V) student logits (gradients flow through them).
        teacher: (B, L, V) teacher logits on the same inputs (no gradient needed).
        labels: (B, L) unshifted labels: position i is scored when ``labels[:, i + 1]`` is not
            `IGNORE_INDEX`, exactly the positions `token_loss_sum` scores.
        temperature: T; both distributions are softened by T and the sum is multiplied by T^2
            (so the gradient scale does not shrink with T; Hinton et al., 2015).

    Returns:
        Scalar float32: T^2 x sum over scored positions of sum_v p_t(v) (log p_t(v) - log p_s(v)), in nats.

    Raises:
        ValueError: the two logits differ in shape (e.g. the teacher has another vocabulary).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ; "
                         "the teacher must share the student's tokenizer and vocabulary.")
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
    s = student[:, :-1][scored].float() / temperature  # (N, V)
    t = teacher[:, :-1][scored].float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="sum")
    return kl * temperature**2


class Distiller:
    """Holds the frozen teacher and mixes the distillation term into a micro-batch's loss.

    Attributes:
        teacher: the teacher causal LM (eval mode, no gradients).
        weight, temperature: from the ``distill`` section.
    """

    def __init__(self, teacher: torch.nn.Module, weight: float, temperature: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight
        self.temperature = temperature

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, V) teacher logits for a micro-batch (``input_ids``, ``position_ids``: (B, L))."""
        return self.teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits

    def micro_batch_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], targets: int) -> torch.Tensor:
        """`loss_sum` of the student's forward pass on ``batch`` (``targets`` is unused: the sums
        are over the same tokens the loop counts)."""
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        return self.loss_sum(token_loss_sum(logits, batch["labels"]), logits, batch)

    def loss_sum(self, token_loss: torch.Tensor, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro-batch's summed training loss with distillation.

        Args:
            token_loss: the summed next-token loss of ``logits`` (`token_loss_sum`).
            logits: (B, L, V) student logits.
            batch: the micro-batch (``input_ids``, ``position_ids``, ``labels``: (B, L)).

        Returns:
            Scalar: ``weight x KL sum + (1 - weight) x token_loss`` (see the module docstring).
        """
        kl = distill_kl_sum(logits, self.teacher_logits(batch), batch["labels"], self.temperature)
        if self.weight == 1.0:
            return kl
        return self.weight * kl + (1.0 - self.weight) * token_loss


def load_teacher(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The teacher of ``config.distill`` on ``device`` (see `DistillSection.teacher`).

    With ``teacher: null`` it is ``model.pretrained`` as saved (``model.config_overrides`` are not
    applied); a wavepos checkpoint is reverted to its stock positions (`hf_wavepos.revert_wavepos`).

    Raises:
        ValueError: the default teacher would be a GPT-2 wavepos checkpoint (its learned ``wpe`` is not
            saved with it), or a checkpoint trained after its conversion (a training run's output: its
            weights with RoPE put back are no longer the stock model): set ``distill.teacher`` to the
            stock checkpoint.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    section = config.distill
    source = section.teacher or config.model.pretrained
    if section.teacher is None and (Path(source).parent / "train_summary.json").is_file():
        raise ValueError(
            f"distill.teacher is null, so the teacher would be {source} with RoPE put back, but that checkpoint is "
            "the output of a training run: its weights are no longer the stock model's. Set distill.teacher to the "
            "stock checkpoint (e.g. `wavepos convert SRC stock --position rope`)."
        )
    dtype = DTYPES.get(config.train.mixed_precision, getattr(torch, config.model.dtype))
    with loading(source, "distill.teacher" if section.teacher else "model.pretrained (the teacher)"):
        teacher = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=config.model.trust_remote_code)
    model_type = teacher.config.model_type
    if section.teacher is None and model_type.startswith("wavepos_"):
        if model_type == "wavepos_gpt2":
            raise ValueError(
                f"distill.teacher is null, so the teacher would be {source} with its stock positions, but a wavepos GPT-2 "
                "checkpoint does not keep the learned wpe table; set distill.teacher to the stock GPT-2 checkpoint."
            )
        from hf_wavepos.models import revert_wavepos

        teacher = revert_wavepos(teacher)
    return teacher.to(device)


def build_distiller(config: TrainConfig, device: torch.device, vocab_size: int,
                    model: torch.nn.Module | None = None) -> Any:
    """The run's `Distiller` (``distill.target: logits``) or
    `hf_wavepos.training.attention_transfer.AttentionTransfer` (``attention``), or None when
    ``distill.enabled`` is false. Call it on the student before Accelerate wraps it.

    Args:
        config: the experiment.
        device: where the student trains (the teacher goes there too).
        vocab_size: the student's output size (the teacher must match it).
        model: the student; needed for attention transfer (its attention layers are hooked) and
            for ``distill.trainable`` (the other parameters are frozen).

    Raises:
        ValueError: the teacher's vocabulary differs from the student's; ``distill.trainable``
            names no module of the student; the teacher's layers differ from the student's.
    """
    section = config.distill
    if not section.enabled:
        return None
    if model is None and (section.target == "attention" or section.trainable is not None):
        raise ValueError("build_distiller needs the student model for distill.target attention or distill.trainable.")
    teacher = load_teacher(config, device)
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if teacher_vocab != vocab_size:
        raise ValueError(f"distill.teacher has a vocabulary of {teacher_vocab}, the model {vocab_size}: the teacher "
                         "must use the student's tokenizer.")
    if section.target == "attention":
        from hf_wavepos.models.registry import architecture_of
        from hf_wavepos.training.attention_transfer import AttentionTransfer, freeze_except

        if not config.lora.enabled:
            freeze_except(model, section.trainable or architecture_of(model.config.model_type).query_key_modules)
        return AttentionTransfer(teacher, model)
    if section.trainable is not None:
        from hf_wavepos.training.attention_transfer import freeze_except

        freeze_except(model, section.trainable)
    return Distiller(teacher, section.weight, section.temperature)
