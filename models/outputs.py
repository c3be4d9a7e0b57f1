"""What the variants' forward outputs share: dataclasses of tensors (and of nested such dataclasses)."""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

import torch

Output = TypeVar("Output")


def detach_output(output: Output) -> Output:
    """A copy of a forward output (a dataclass) with every tensor detached, nested dataclasses (such as
    the training forward's ``random_pass``) included; other fields are kept as they are."""
    def detached(value):
        if isinstance(value, torch.Tensor):
            return value.detach()
        if is_dataclass(value) and not isinstance(value, type):
            return detach_output(value)
        return value

    return replace(output, **{f.name: detached(getattr(output, f.name)) for f in fields(output) if f.init})
