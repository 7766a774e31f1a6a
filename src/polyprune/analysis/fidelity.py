"""Hidden-state fidelity of a pruned model (Kurz et al. 2025, App. D.1, after Kuzmin et al. 2023).

Per layer k, with H [N, d] the dense and H̃ the pruned hidden states of the same N real tokens
(pads and special tokens excluded) and μ = mean token norm ‖h_i‖₂ of the dense states:

- pruning error  = 1/(N d) Σ ((h − h̃)/μ)²
- SNR_dB         = 10 log10( (1/(N d) Σ (h/μ)²) / pruning error ); the model SNR is the mean over layers.

Both are computed from running sums so that any number of batches can stream through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def pruning_error(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """Normalised pruning error of one layer; ``dense``/``pruned``: [N, d] real tokens only."""
    acc = FidelityAccumulator()
    acc.add(dense, pruned)
    return acc.pruning_error


def snr_db(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """SNR in dB of one layer; ``dense``/``pruned``: [N, d] real tokens only."""
    acc = FidelityAccumulator()
    acc.add(dense, pruned)
    return acc.snr_db


@dataclass
class FidelityAccumulator:
    """Running sums for one layer: Σ‖h‖, Σ‖h‖², Σ‖h − h̃‖², token count N and width d."""

    n: int = 0
    d: int = 0
    sum_norm: float = 0.0
    sum_sq: float = 0.0
    sum_err: float = 0.0

    def add(self, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        h = dense.reshape(-1, dense.shape[-1]).double()
        ht = pruned.reshape(-1, pruned.shape[-1]).double()
        if h.shape != ht.shape:
            raise ValueError(f"dense {tuple(h.shape)} and pruned {tuple(ht.shape)} hidden states differ")
        self.d = h.shape[1]
        self.n += h.shape[0]
        norms = h.norm(dim=1)
        self.sum_norm += float(norms.sum())
        self.sum_sq += float((norms ** 2).sum())
        self.sum_err += float(((h - ht) ** 2).sum())

    @property
    def mu(self) -> float:
        return self.sum_norm / self.n

    @property
    def pruning_error(self) -> float:
        return self.sum_err / (self.n * self.d * self.mu ** 2)

    @property
    def signal(self) -> float:
        return self.sum_sq / (self.n * self.d * self.mu ** 2)

    @property
    def snr_db(self) -> float:
        if self.sum_err == 0:
            return math.inf
        return 10.0 * math.log10(self.signal / self.pruning_error)
