"""Figures reported by the MedMod paper that the tools compare this implementation against."""

from __future__ import annotations

# Table 8: trainable parameters in millions; a model missing here was not reported.
PAPER_MILLIONS: dict[str, float] = {
    "medfuse": 23.9,
    "mmtm": 23.5,
    "daft": 22.3,
    "early": 1.70,
    "joint": 23.9,
    "ssl_finetune": 21.4,  # "ConVIRT fine-tune"
    "ssl_probe": 0.000641,  # "ConVIRT linear probe": Linear(128 + 512 -> 1)
}
