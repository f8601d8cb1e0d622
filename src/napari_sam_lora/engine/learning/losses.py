"""Losses for training LoRA adapters on SAM2's multimask decoder output.

SAM2 tracks with three candidate masks and keeps the one with the highest *predicted* IoU,
gated by the object score. Training must therefore teach (a) one mask to match the
correction, (b) the IoU head to rank that mask first, and (c) the object score to say
"present" when the correction is non-empty. :func:`multimask_loss` does all three, as SAM2's
own training does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam_lora.engine.learning.lora_settings import LoraSettings


@dataclass
class MultimaskLoss:
    """Result of :func:`multimask_loss`.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar total loss (mean over the batch), differentiable.
    chosen_iou : torch.Tensor
        ``(B,)`` IoU of the mask SAM2 would output (argmax predicted IoU, object-score
        gated) with the target; no gradient.
    mask_loss, iou_loss, object_loss : torch.Tensor
        Detached batch means of the three terms (unweighted).
    """

    loss: torch.Tensor
    chosen_iou: torch.Tensor
    mask_loss: torch.Tensor
    iou_loss: torch.Tensor
    object_loss: torch.Tensor


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss, averaged over the last two (spatial) dimensions.

    Parameters
    ----------
    logits, targets : torch.Tensor
        Same shape ``(..., H, W)``; targets in ``[0, 1]``.
    alpha, gamma : float
        Class balance (``< 0`` disables it) and focusing parameter.

    Returns
    -------
    torch.Tensor
        Shape ``(...)``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2|P∩T| + eps) / (|P| + |T| + eps)`` over the last two dims."""
    prob = logits.sigmoid().flatten(-2)
    flat = targets.flatten(-2)
    return 1 - (2 * (prob * flat).sum(-1) + eps) / (prob.sum(-1) + flat.sum(-1) + eps)


def binary_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks over the last two dims (two empty masks have IoU 1)."""
    pred, target = pred.flatten(-2), target.flatten(-2)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def chosen_mask_iou(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    object_score_logits: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """``(B,)`` IoU of SAM2's pick (highest predicted IoU, gated by the object score)."""
    with torch.no_grad():
        batch = torch.arange(mask_logits.shape[0], device=mask_logits.device)
        chosen = mask_logits[batch, iou_pred.argmax(dim=1)] > 0
        present = (object_score_logits.reshape(-1) > 0)[:, None, None]
        return binary_iou(chosen & present, targets.reshape(chosen.shape) > 0.5)


def multimask_loss(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    object_score_logits: torch.Tensor,
    targets: torch.Tensor,
    weights: LoraSettings | None = None,
) -> MultimaskLoss:
    """Loss on SAM2's multimask output against one target mask per batch item.

    Parameters
    ----------
    mask_logits : torch.Tensor
        ``(B, M, H, W)`` mask logits (M = 3 for multimask output, 1 otherwise).
    iou_pred : torch.Tensor
        ``(B, M)`` predicted IoUs.
    object_score_logits : torch.Tensor
        ``(B, 1)`` object-score logits.
    targets : torch.Tensor
        ``(B, 1, H, W)`` or ``(B, H, W)`` float targets in ``[0, 1]``.
    weights : LoraSettings, optional
        Whose ``focal_weight``, ``dice_weight``, ``iou_weight``, ``object_score_weight``,
        ``focal_alpha`` and ``focal_gamma`` weigh the terms; ``LoraSettings()`` when omitted.

    Returns
    -------
    MultimaskLoss
        Mask loss on the best mask (min over M of focal·w + dice·w), plus the MSE between
        each mask's predicted and actual IoU, plus BCE of the object score with
        "target non-empty", and the IoU of the mask SAM2 would pick.
    """
    w = weights or LoraSettings()
    tgt = targets.reshape(mask_logits.shape[0], 1, *mask_logits.shape[-2:]).float()
    tgt_m = tgt.expand_as(mask_logits)
    per_mask = w.focal_weight * sigmoid_focal_loss(
        mask_logits, tgt_m, w.focal_alpha, w.focal_gamma
    ) + w.dice_weight * dice_loss(mask_logits, tgt_m)
    mask_loss = per_mask.min(dim=1).values
    actual_iou = binary_iou(mask_logits.detach() > 0, tgt_m > 0.5)
    iou_loss = ((iou_pred.float() - actual_iou) ** 2).mean(dim=1)
    present = (tgt.flatten(1).amax(dim=1) > 0.5).float()
    object_loss = F.binary_cross_entropy_with_logits(
        object_score_logits.reshape(-1).float(), present, reduction="none"
    )
    total = mask_loss + w.iou_weight * iou_loss + w.object_score_weight * object_loss
    return MultimaskLoss(
        loss=total.mean(),
        chosen_iou=chosen_mask_iou(mask_logits, iou_pred, object_score_logits, tgt),
        mask_loss=mask_loss.detach().mean(),
        iou_loss=iou_loss.detach().mean(),
        object_loss=object_loss.detach().mean(),
    )


def resize_mask(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(H, W)`` mask to ``size`` (bilinear, antialiased, thresholded at 0.5).

    Like SAM2's own resizing, the aspect ratio is not preserved. Returns a float
    ``(h, w)`` tensor of zeros and ones on the CPU.
    """
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not torch.is_tensor(mask) else mask)
    t = t.detach().float().cpu()
    if t.ndim != 2:
        raise ValueError(f"A target mask must be 2-D (H, W), got shape {tuple(t.shape)}.")
    if tuple(t.shape) == tuple(size):
        return (t > 0.5).float()
    out = F.interpolate(
        t[None, None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return (out[0, 0] >= 0.5).float()


def logits_iou(logits: np.ndarray | torch.Tensor, target: np.ndarray) -> float:
    """IoU between ``logits > 0`` (upsampled to the target's size) and a ``(H, W)`` mask."""
    t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    target_t = torch.as_tensor(np.asarray(target).astype(bool))
    if tuple(t.shape) != tuple(target_t.shape):
        t = F.interpolate(
            t[None, None], size=tuple(target_t.shape), mode="bilinear", align_corners=False
        )[0, 0]
    return float(binary_iou(t > 0, target_t))
