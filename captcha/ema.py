"""A moving average of a model's weights whose update never makes the host wait for the device."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


class DeviceEMA(AveragedModel):
    """torch's `AveragedModel` with the EMA update of `get_ema_multi_avg_fn`, weights and buffers
    averaged, and the same state_dict (checkpoints are unchanged). Its update tells the first call
    from the others by a count kept on the host: `AveragedModel` reads its `n_averaged` buffer,
    which on a GPU is a synchronisation in every training step."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.updates = 0  # the host's copy of n_averaged

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # read once, when a run is restored
        return result

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - self.decay)
            for a, c in zip(averaged, current):
                if not a.is_floating_point():  # batch counters, as get_ema_multi_avg_fn treats them
                    a.copy_(a * self.decay + c * (1.0 - self.decay))
        self.n_averaged += 1
        self.updates += 1
