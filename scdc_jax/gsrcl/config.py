"""GsRCL configuration: one dataclass with the published defaults, loadable from TOML.

Run with the published settings::

    python -m scdc_jax.gsrcl --config configs/gsrcl_paper.toml --data-file data.h5

``epochs = 0`` means the published count for the loss: 3000 for SimCLR, 1000 for SupCon.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..configfile import load_dataclass_config
from ..errors import InputError

PUBLISHED_EPOCHS = {"simclr": 3000, "supcon": 1000}


@dataclass
class GsRCLConfig:
    loss: str = "simclr"
    temperature: float = 0.07
    lr: float = 1e-4
    weight_decay: float = 1e-6
    batch_size: int = 8192
    epochs: int = 0
    eval_every: int = 50
    noise_std: float = 1.0
    augment: str = "gaussian"      # "gaussian" (GsRCL) or "dropout" (the random-gene-masking baseline)
    dropout: float = 0.9           # masking baseline: probability that an input gene is zeroed
    n_top_genes: int = 0           # masking baseline: scanpy preprocessing to this many HVGs (0: log1p, all genes)
    batch_norm: object = "auto"    # "auto": BatchNorm when a training set has more than 8192 cells
    encoder: list[int] = field(default_factory=lambda: [4096, 4096, 4096, 2048])
    head: list[int] = field(default_factory=lambda: [512, 128])
    n_folds: int = 5
    val_fraction: float = 0.2
    svm_gamma: list = field(default_factory=lambda: ["scale", 1e-4, 1e-3, 1e-2])
    svm_c: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    svm_cv: int = 5
    svm_workers: int = -1          # processes for the SVM grid searches beside training (-1: cores - 1; 0: inline)
    encoders: str = "auto"         # "shared" (one per outer fold), "per-type", "auto": shared unless SupCon
    precision: str = "f32"         # "bf16": bfloat16 matmuls, float32 parameters, loss and optimiser
    fold_batch: str = "auto"       # outer folds' encoders trained together as one vmapped program: "on", "off",
    #                                "auto": on a GPU/TPU when they fit in half its memory (train.use_fold_batch)
    seed: int = 0
    devices: int = 1

    @property
    def n_epochs(self) -> int:
        return self.epochs or PUBLISHED_EPOCHS[self.loss]

    def validate(self) -> "GsRCLConfig":
        if self.loss not in PUBLISHED_EPOCHS:
            raise InputError(f"--loss must be 'simclr' or 'supcon', got '{self.loss}'.")
        for name in ("temperature", "lr", "batch_size", "eval_every", "noise_std", "n_folds", "svm_cv", "devices"):
            value = getattr(self, name)
            if not value > 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}.")
        for name in ("weight_decay", "epochs", "seed"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}.")
        if self.augment not in ("gaussian", "dropout"):
            raise InputError(f"augment must be 'gaussian' or 'dropout', got '{self.augment}'.")
        if not 0.0 < self.dropout < 1.0:
            raise InputError(f"--dropout must lie strictly between 0 and 1, got {self.dropout}.")
        if self.n_top_genes < 0 or self.svm_workers < -1:
            raise InputError("n_top_genes must be zero or positive and svm_workers -1 (all cores but one) or more.")
        if self.encoders not in ("auto", "shared", "per-type"):
            raise InputError(f"--encoders must be 'shared', 'per-type' or 'auto', got '{self.encoders}'.")
        if self.encoders == "shared" and self.loss == "supcon":
            raise InputError("SupCon learns from each task's labels, so it needs one encoder per cell type: "
                             "use --encoders per-type (or leave it out) with --loss supcon.")
        if self.fold_batch not in ("auto", "on", "off"):
            raise InputError(f"--fold-batch must be 'auto', 'on' or 'off', got '{self.fold_batch}'.")
        if self.precision not in ("f32", "bf16"):
            raise InputError(f"--precision must be 'f32' or 'bf16', got '{self.precision}'.")
        if self.batch_norm not in ("auto", True, False):
            raise InputError(f"batch_norm must be \"auto\", true or false, got {self.batch_norm!r}.")
        if self.n_folds < 2 or self.svm_cv < 2:
            raise InputError("n_folds and svm_cv must be at least 2 for cross-validation.")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}.")
        for name in ("encoder", "head"):
            sizes = getattr(self, name)
            if not sizes or any(int(s) <= 0 for s in sizes):
                raise InputError(f"{name} layer sizes must be a non-empty list of positive integers, got {sizes}.")
        if not self.svm_gamma or any(g != "scale" and not (isinstance(g, (int, float)) and g > 0)
                                     for g in self.svm_gamma):
            raise InputError(f"svm_gamma must be a list of 'scale' or positive numbers, got {self.svm_gamma}.")
        if not self.svm_c or any(not c > 0 for c in self.svm_c):
            raise InputError(f"svm_c must be a list of positive numbers, got {self.svm_c}.")
        return self

    @property
    def encoder_mode(self) -> str:
        """"shared" or "per-type": ``encoders`` with "auto" resolved (per-type for SupCon)."""
        if self.encoders == "auto":
            return "per-type" if self.loss == "supcon" else "shared"
        return self.encoders

    @property
    def method(self) -> str:
        """The name of the learnt representation in results tables."""
        if self.augment == "dropout":
            return f"masking_hvg{self.n_top_genes}" if self.n_top_genes else "masking"
        return "gsrcl"

    def svm_grid(self) -> dict:
        return {"gamma": list(self.svm_gamma), "C": [float(c) for c in self.svm_c]}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "n_epochs": self.n_epochs, "encoder_mode": self.encoder_mode}


def load_config(path: str | None, **overrides) -> GsRCLConfig:
    """Defaults, then the TOML file's values (top level or a ``[gsrcl]`` table), then the non-None
    ``overrides``."""
    return load_dataclass_config(GsRCLConfig, path, "gsrcl", overrides)
