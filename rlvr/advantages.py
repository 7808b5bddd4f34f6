"""Group-normalised advantages (GRPO's outcome advantage).

For each prompt's group of G rewards R_1..R_G:

    A_i = (R_i - mean(R)) / (std(R) + eps)     if scale_by_std
    A_i =  R_i - mean(R)                       otherwise (Dr.GRPO)

``std`` is the unbiased sample standard deviation (divides by G - 1), as in the GRPO
paper's reference code. A group whose rewards are all equal has A = 0 for every member:
it carries no learning signal, and its share is reported as ``zero_std_groups``.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages [N] for rewards [N] laid out prompt-major (N = prompts * group_size).

    Returns ``(advantages, zero_std_share)``; the share is a 0-dim tensor in [0, 1].
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size).double()  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    std = grouped.std(dim=1, keepdim=True)  # [P, 1]
    if scale_by_std:
        # An all-equal group is 0 already; dividing 0 by (0 + eps) must not turn it into NaN when eps = 0.
        advantages = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # [P, G]
    else:
        advantages = centred
    zero_std = (grouped.max(dim=1).values == grouped.min(dim=1).values).double().mean()
    return advantages.view(-1).to(rewards.dtype), zero_std.to(rewards.dtype)
