"""Algorithm 1 and the other coefficient transforms: hand-computed values, dtype, range."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uniapl.discriminators import TRANSFORMS, adversarial_coefficient, get_transform, register_transform


def test_algorithm1_hand_values():
    # r = 0: p = 0.5 -> coef = 1
    assert adversarial_coefficient(torch.tensor([0.0])).item() == 1.0
    # r = +-inf: p in {0, 1} -> 1 - 8 * 0.25 = -1
    out = adversarial_coefficient(torch.tensor([float("inf"), float("-inf")]))
    assert out.tolist() == [-1.0, -1.0]
    # r = -0.6 (POLAR, identical answer): p = 1 / (1 + e^0.6) = 0.354344, (p - 0.5)^2 = 0.0212159,
    # coef = 1 - 0.169726 = 0.830274
    assert adversarial_coefficient(torch.tensor([-0.6], dtype=torch.float64)).item() == pytest.approx(0.830274, abs=1e-6)
    # r = -11 (POLAR, wrong answer): p = 1.670e-5 -> coef = -0.999866
    assert adversarial_coefficient(torch.tensor([-11.0])).item() == pytest.approx(-0.999866, abs=1e-5)
    # zero crossing at |r| = 2 ln(1 + sqrt 2)
    r0 = 2 * math.log(1 + math.sqrt(2))
    assert adversarial_coefficient(torch.tensor([r0, -r0], dtype=torch.float64)).abs().max().item() < 1e-12


def test_algorithm1_symmetric_and_monotone_on_negative_branch():
    r = torch.linspace(-20, 0, 201, dtype=torch.float64)
    c = adversarial_coefficient(r)
    assert torch.all(c[1:] >= c[:-1])  # grows with r for r <= 0 (POLAR's range)
    assert torch.allclose(adversarial_coefficient(-r), c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    r = torch.tensor([-3.0, -0.6, 0.0, 2.0], dtype=dtype)
    out = adversarial_coefficient(r)
    assert out.dtype == dtype and out.shape == r.shape
    ref = adversarial_coefficient(r.double())
    assert torch.allclose(out.double(), ref, atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    assert adversarial_coefficient(torch.zeros(2, 3, dtype=dtype)).eq(1).all()


def test_integer_input_promoted():
    assert adversarial_coefficient(torch.tensor([0])).dtype == torch.get_default_dtype()


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, width=32))
def test_every_transform_in_range(x):
    for name, fn in TRANSFORMS.items():
        v = fn(torch.tensor([x], dtype=torch.float32)).item()
        assert -1.0 <= v <= 1.0, (name, x, v)


def test_named_transforms():
    assert get_transform("algorithm1") is adversarial_coefficient
    r = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(get_transform("2p-1")(r), 2 * torch.sigmoid(r) - 1)
    assert torch.allclose(get_transform("tanh")(r), torch.tanh(r))
    with pytest.raises(KeyError, match="known"):
        get_transform("nope")


def test_register_transform_rejects_duplicates():
    with pytest.raises(ValueError):
        register_transform("algorithm1")(lambda r: r)
