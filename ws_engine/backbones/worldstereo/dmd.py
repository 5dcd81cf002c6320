"""The 4-step DMD flow scheduler of ``worldstereo-memory-dmd`` (a diffusers-style scheduler).

Timesteps: ``linspace(start, end, steps)`` reversed, divided by ``end``, shifted by
``s t / (1 + (s - 1) t)`` and multiplied by ``end``: for start 250, end 1000, shift 5 and 4 steps
[1000, 937.5, 833.3, 625]. A step is an Euler flow step ``x + (sigma_next - sigma) v`` with
``sigma = t / end`` and 0 after the last timestep. No classifier-free guidance.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["FlowDMDScheduler", "dmd_timesteps"]


def dmd_timesteps(start: float = 250, end: float = 1000, shift: float = 5.0, steps: int = 4) -> torch.Tensor:
    """The shifted timesteps [steps] (float32, descending)."""
    t = torch.linspace(float(start), float(end), int(steps), dtype=torch.float32).flip(0) / float(end)
    return shift * t / (1 + (shift - 1) * t) * float(end)


class FlowDMDScheduler(SchedulerMixin, ConfigMixin):
    """Few-step Euler flow scheduler (official ``FlowGeneratorScheduler`` in test mode)."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, start_timesteps: float = 250, num_train_timesteps: float = 1000, shift: float = 5.0, dmd_steps: int = 4):
        self.timesteps = dmd_timesteps(start_timesteps, num_train_timesteps, shift, dmd_steps)

    @property
    def sigmas(self) -> torch.Tensor:
        """[steps + 1]: timesteps / end, then 0."""
        return torch.cat([self.timesteps / self.config.num_train_timesteps, torch.zeros(1)])

    def set_timesteps(self, num_inference_steps: int | None = None, device=None) -> None:
        """The step count is fixed by ``dmd_steps``; ``num_inference_steps`` is ignored."""
        self.timesteps = dmd_timesteps(self.config.start_timesteps, self.config.num_train_timesteps, self.config.shift,
                                       self.config.dmd_steps).to(device)

    def _index(self, timestep) -> int:
        t = float(torch.as_tensor(timestep).flatten()[0])
        return int((self.timesteps.cpu() - t).abs().argmin())

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """``sample + (sigma_next - sigma) * model_output`` (flow velocity ``model_output``)."""
        i = self._index(timestep)
        sigmas = self.sigmas
        prev = sample + (float(sigmas[i + 1]) - float(sigmas[i])) * model_output.to(sample.dtype)
        return SimpleNamespace(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Flow matching: ``(1 - sigma) x0 + sigma noise`` with ``sigma = t / end`` per batch element."""
        sigma = (timesteps.float() / self.config.num_train_timesteps).to(original_samples.device)
        sigma = sigma.reshape(-1, *([1] * (original_samples.dim() - 1)))
        return (1 - sigma) * original_samples + sigma * noise
