"""Raw discriminator score r -> adversarial coefficient in [-1, 1].

The paper's transform is Algorithm 1 (appendix A.3):

    p = sigmoid(r),   coef = 1 - 8 (p - 0.5)^2

coef is 1 at r = 0 and falls to -1 as |r| -> inf. It is *not* monotone in r: it is symmetric around
r = 0. POLAR's raw scores are almost always negative (identical answer about -0.6, a wrong answer about
-11), and the offline scorers of this package are built to give raw scores <= -0.5 as well, so over the
range actually seen coef grows with similarity. coef crosses 0 where |p - 0.5| = 1/sqrt(8), i.e. at
|r| = 2 ln(1 + sqrt 2) = 1.7627; at r = -0.6 (POLAR, identical answer) coef = 0.8303.

Other transforms are selectable by name (``DiscriminatorConfig.transform``); add one with
``register_transform``. Every transform maps a float tensor to a tensor of the same dtype and shape.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Transform = Callable[[Tensor], Tensor]

TRANSFORMS: dict[str, Transform] = {}


def register_transform(*names: str) -> Callable[[Transform], Transform]:
    """Decorator: register a raw-score -> coefficient transform under one or more names."""

    def wrap(fn: Transform) -> Transform:
        for name in names:
            if name in TRANSFORMS:
                raise ValueError(f"transform {name!r} is already registered")
            TRANSFORMS[name] = fn
        return fn

    return wrap


def _as_float(r: Tensor) -> Tensor:
    if not isinstance(r, Tensor):
        r = torch.as_tensor(r)
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    return r


@register_transform("algorithm1", "polar")
def adversarial_coefficient(r: Tensor) -> Tensor:
    """Algorithm 1 of the paper: ``coef = 1 - 8 (sigmoid(r) - 0.5)^2``, elementwise.

    Args:
        r: raw discriminator scores, any shape, any float dtype (integer input is promoted to the
            default float dtype).
    Returns:
        coef, same shape and dtype as ``r``, in [-1, 1]; 1 at r = 0, -1 at r = +-inf; NaN stays NaN.

    Computed in float32 (float64 stays float64) and cast back, so half-precision inputs do not lose
    the 1 - 8 x^2 cancellation near r = 0.
    """
    r = _as_float(r)
    work = r if r.dtype == torch.float64 else r.float()
    p = torch.sigmoid(work)
    coef = 1.0 - 8.0 * (p - 0.5) ** 2
    return coef.clamp(-1.0, 1.0).to(r.dtype)


@register_transform("2p-1", "linear")
def linear_coefficient(r: Tensor) -> Tensor:
    """``coef = 2 sigmoid(r) - 1`` (= tanh(r / 2)): monotone in r, 0 at r = 0.

    Suited to discriminators whose raw score is a logit "looks like the teacher" (the learned
    discriminator): fooling the discriminator is rewarded without bound. With POLAR-scale scores
    (always negative) it is always negative, so it only ranks candidates.
    """
    r = _as_float(r)
    work = r if r.dtype == torch.float64 else r.float()
    return (2.0 * torch.sigmoid(work) - 1.0).to(r.dtype)


@register_transform("tanh")
def tanh_coefficient(r: Tensor) -> Tensor:
    """``coef = tanh(r)``: monotone, steeper than ``2p-1``."""
    r = _as_float(r)
    work = r if r.dtype == torch.float64 else r.float()
    return torch.tanh(work).to(r.dtype)


def get_transform(name: str) -> Transform:
    """The transform registered under ``name``; a clear KeyError listing the known names otherwise."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise KeyError(f"unknown discriminator transform {name!r}; known: {sorted(TRANSFORMS)}") from None
