"""Tests of miracl_grid.trainables.losses: hand-computed values, closed-form gradients, limits, stability,
MLLSC correction and Multi-T estimation on synthetic noise with known flip rates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.losses import (
    MultiTransition,
    asymmetric_loss,
    binary_cross_entropy,
    focal_loss,
    forward_corrected_bce,
    generalized_cross_entropy,
    mllsc_loss,
    pair_loss_for,
    symmetric_cross_entropy,
)
from miracl_grid.trainables.registry import METHODS

PAIR_LOSSES = {name: record.loss_function() for name, record in METHODS.items() if record.loss}


@pytest.fixture(autouse=True)
def double_precision():
    """Closed-form comparisons in float64; restored afterwards so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def gradient(loss_fn, logits: torch.Tensor, targets: torch.Tensor, **kwargs) -> torch.Tensor:
    """d(sum of per-pair losses)/d logits, i.e. the per-pair derivative."""
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits, targets, reduction="sum", **kwargs).backward()
    return logits.grad


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator) * 3
    hard = (torch.rand(6, 5, generator=generator) > 0.5).double()
    soft = torch.rand(6, 5, generator=generator)
    return logits, hard, soft


# --------------------------------------------------------------------------------- BCE
def test_bce_hand_values_and_reference(batch):
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    per_pair = binary_cross_entropy(logits, targets, reduction="none")
    assert per_pair[0, 0].item() == pytest.approx(math.log(2.0))
    assert per_pair[0, 1].item() == pytest.approx(math.log(1.0 + math.exp(2.0)))
    assert binary_cross_entropy(logits, targets).item() == pytest.approx(per_pair.mean().item())
    x, hard, soft = batch
    for targets in (hard, soft):
        expected = F.binary_cross_entropy_with_logits(x, targets)
        assert binary_cross_entropy(x, targets).item() == pytest.approx(expected.item(), rel=1e-12)


def test_bce_gradient_closed_form(batch):
    x, hard, soft = batch
    for targets in (hard, soft):
        expected = torch.sigmoid(x) - targets                      # d BCE / d x = σ(x) − y
        assert torch.allclose(gradient(binary_cross_entropy, x, targets), expected, atol=1e-12)
    # mean reduction divides by B·L
    x = x.clone().requires_grad_(True)
    binary_cross_entropy(x, hard).backward()
    assert torch.allclose(x.grad, (torch.sigmoid(x.detach()) - hard) / hard.numel(), atol=1e-12)


# ------------------------------------------------------------------------------- Focal
def focal_closed_form(x, y, gamma, alpha):
    p = torch.sigmoid(x)
    value = torch.where(y == 1, -alpha * (1 - p) ** gamma * torch.log(p),
                        -(1 - alpha) * p ** gamma * torch.log(1 - p))
    # d/dx: y=1: α(1−p)^γ [γ p log p − (1 − p)];  y=0: (1−α) p^γ [p − γ (1 − p) log(1 − p)]
    grad = torch.where(y == 1, alpha * (1 - p) ** gamma * (gamma * p * torch.log(p) - (1 - p)),
                       (1 - alpha) * p ** gamma * (p - gamma * (1 - p) * torch.log(1 - p)))
    return value, grad


def test_focal_hand_value():
    value = focal_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]), reduction="none")
    assert value[0, 0].item() == pytest.approx(0.25 * 0.25 * math.log(2))   # α (1−p)^2 (−log p)
    assert value[0, 1].item() == pytest.approx(0.75 * 0.25 * math.log(2))


def test_focal_values_and_gradient_closed_form(batch):
    x, hard, _ = batch
    expected_value, expected_grad = focal_closed_form(x, hard, 2.0, 0.25)
    assert torch.allclose(focal_loss(x, hard, reduction="none"), expected_value, atol=1e-12)
    assert torch.allclose(gradient(focal_loss, x, hard), expected_grad, atol=1e-10)
    expected_value, expected_grad = focal_closed_form(x, hard, 1.5, 0.6)
    assert torch.allclose(focal_loss(x, hard, gamma=1.5, alpha=0.6, reduction="none"),
                          expected_value, atol=1e-12)
    assert torch.allclose(gradient(focal_loss, x, hard, gamma=1.5, alpha=0.6), expected_grad,
                          atol=1e-10)


def test_focal_gamma_zero_half_alpha_is_half_bce(batch):
    x, hard, soft = batch
    for targets in (hard, soft):
        focal = focal_loss(x, targets, gamma=0.0, alpha=0.5)
        assert focal.item() == pytest.approx(0.5 * binary_cross_entropy(x, targets).item(), rel=1e-12)
        assert torch.allclose(gradient(focal_loss, x, targets, gamma=0.0, alpha=0.5),
                              0.5 * (torch.sigmoid(x) - targets), atol=1e-12)


# --------------------------------------------------------------------------------- ASL
def asl_closed_form(x, y, gamma_neg, gamma_pos, clip, detached=False):
    p = torch.sigmoid(x)
    pm = (p - clip).clamp(min=0)
    value = torch.where(y == 1, -(1 - p) ** gamma_pos * torch.log(p),
                        -pm ** gamma_neg * torch.log(1 - pm))
    if detached:
        grad_pos = -(1 - p) ** (gamma_pos + 1)
        grad_neg = pm ** gamma_neg * p * (1 - p) / (1 - pm)
    else:
        grad_pos = (1 - p) ** gamma_pos * (gamma_pos * p * torch.log(p) - (1 - p))
        # paper: dℓ−/dz = p_m^γ [1/(1 − p_m) − γ log(1 − p_m)/p_m] p(1 − p), zero for p <= m
        safe = torch.where(pm > 0, pm, torch.ones_like(pm))
        grad_neg = torch.where(pm > 0, safe ** gamma_neg * (1 / (1 - safe) - gamma_neg
                                                             * torch.log(1 - safe) / safe)
                               * p * (1 - p), torch.zeros_like(pm))
    return value, torch.where(y == 1, grad_pos, grad_neg)


def test_asl_hand_value():
    value = asymmetric_loss(torch.tensor([[0.0, 0.0, -4.0]]), torch.tensor([[0.0, 1.0, 0.0]]),
                            reduction="none")
    assert value[0, 0].item() == pytest.approx(-(0.45 ** 4) * math.log(0.55))   # p_m = 0.5 − 0.05
    assert value[0, 1].item() == pytest.approx(0.5 * math.log(2))               # (1 − p)^1 (−log p)
    assert value[0, 2].item() == 0.0                                            # p = 0.018 < m


@pytest.mark.parametrize("detached", [False, True])
def test_asl_values_and_gradient_closed_form(batch, detached):
    x, hard, _ = batch
    x = torch.cat([x, torch.tensor([[-4.0, -3.5, 0.1, 1.0, 2.0]])])   # some p < m negatives
    hard = torch.cat([hard, torch.zeros(1, 5)])
    expected_value, expected_grad = asl_closed_form(x, hard, 4.0, 1.0, 0.05, detached)
    assert torch.allclose(asymmetric_loss(x, hard, reduction="none"), expected_value, atol=1e-12)
    got = gradient(asymmetric_loss, x, hard, detach_focusing_weight=detached)
    assert torch.allclose(got, expected_grad, atol=1e-10)
    assert got[-1, :2].abs().max().item() == 0.0       # shifted-away easy negatives: no gradient
    if not detached:                                   # the default follows the paper: not detached
        assert torch.allclose(gradient(asymmetric_loss, x, hard), expected_grad, atol=1e-10)


def test_asl_reduces_to_bce(batch):
    x, hard, soft = batch
    for targets in (hard, soft):
        kwargs = dict(gamma_negative=0.0, gamma_positive=0.0, clip=0.0)
        assert asymmetric_loss(x, targets, **kwargs).item() == pytest.approx(
            binary_cross_entropy(x, targets).item(), rel=1e-12)
        assert torch.allclose(gradient(asymmetric_loss, x, targets, **kwargs),
                              torch.sigmoid(x) - targets, atol=1e-12)


def test_asl_eps_clamp_matches_reference_cap():
    # the reference clamps p at 1e-8: a positive at logit −50 costs −log(1e-8), no more
    value = asymmetric_loss(torch.tensor([[-50.0]]), torch.tensor([[1.0]]), gamma_positive=0.0)
    assert value.item() == pytest.approx(-math.log(1e-8))
    unclamped = asymmetric_loss(torch.tensor([[-50.0]]), torch.tensor([[1.0]]),
                                gamma_positive=0.0, eps=0.0)
    assert unclamped.item() == pytest.approx(50.0, rel=1e-9)


# --------------------------------------------------------------------------------- GCE
def test_gce_hand_values_and_gradient(batch):
    value = generalized_cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                                      reduction="none")
    assert value[0, 0].item() == pytest.approx((1 - 0.5 ** 0.7) / 0.7)
    assert value[0, 1].item() == pytest.approx((1 - 0.5 ** 0.7) / 0.7)
    x, hard, _ = batch
    p = torch.sigmoid(x)
    q = 0.7
    expected = torch.where(hard == 1, (1 - p ** q) / q, (1 - (1 - p) ** q) / q)
    assert torch.allclose(generalized_cross_entropy(x, hard, reduction="none"), expected, atol=1e-12)
    expected_grad = torch.where(hard == 1, -p ** q * (1 - p), (1 - p) ** q * p)
    assert torch.allclose(gradient(generalized_cross_entropy, x, hard), expected_grad, atol=1e-12)
    # q = 1: mean absolute error 1 − p_t
    mae = generalized_cross_entropy(x, hard, q=1.0, reduction="none")
    assert torch.allclose(mae, torch.where(hard == 1, 1 - p, p), atol=1e-12)


def test_gce_small_q_approaches_bce(batch):
    x, hard, soft = batch
    for targets in (hard, soft):
        gce = generalized_cross_entropy(x, targets, q=1e-4, reduction="none")
        bce = binary_cross_entropy(x, targets, reduction="none")
        assert torch.allclose(gce, bce, rtol=5e-3, atol=1e-6)
        assert torch.allclose(gradient(generalized_cross_entropy, x, targets, q=1e-4),
                              torch.sigmoid(x) - targets, atol=5e-3)


def test_gce_soft_target_linearity(batch):
    x, _, soft = batch
    positive = generalized_cross_entropy(x, torch.ones_like(x), reduction="none")
    negative = generalized_cross_entropy(x, torch.zeros_like(x), reduction="none")
    mixed = generalized_cross_entropy(x, soft, reduction="none")
    assert torch.allclose(mixed, soft * positive + (1 - soft) * negative, atol=1e-12)


# --------------------------------------------------------------------------------- MLLSC
def test_mllsc_uncorrected_pairs_hand_values():
    # observed 1 at x = 1 (p = 0.73 >= 0.4: kept): focal margin with q = σ(1 − 1) = 0.5
    # observed 0 at x = 0 (p = 0.5 <= 0.55: kept): −p² log(1 − p)
    value = mllsc_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), reduction="none")
    assert value[0, 0].item() == pytest.approx(0.25 * math.log(2))
    assert value[0, 1].item() == pytest.approx(0.25 * math.log(2))


def test_mllsc_confident_negative_is_corrected():
    x = torch.tensor([[2.0]])                   # p = 0.881 > τ_pos = 0.55, observed 0
    y = torch.tensor([[0.0]])
    p = sigmoid(2.0)
    bce_grad = gradient(binary_cross_entropy, x, y).item()
    assert bce_grad == pytest.approx(p)         # BCE pushes the logit down
    got = gradient(mllsc_loss, x, y).item()
    # treated as a positive: d/dx[−(1−p)² log p] = (1−p)² [2 p log p − (1 − p)] < 0
    assert got == pytest.approx((1 - p) ** 2 * (2 * p * math.log(p) - (1 - p)), rel=1e-10)
    assert got < 0 < bce_grad
    value = mllsc_loss(x, y).item()
    assert value == pytest.approx(-(1 - p) ** 2 * math.log(p))
    # without correction it is the focal negative term and pushes down again
    assert gradient(mllsc_loss, x, y, correction=False).item() > 0


def test_mllsc_unlikely_positive_is_treated_as_corrupted():
    x = torch.tensor([[-2.0]])                  # p = 0.119 < 1 − τ_neg = 0.4, observed 1
    y = torch.tensor([[1.0]])
    p = sigmoid(-2.0)
    got = gradient(mllsc_loss, x, y).item()
    # treated as a negative: d/dx[−p² log(1−p)] = p² [p − 2 (1 − p) log(1 − p)] > 0
    assert got == pytest.approx(p ** 2 * (p - 2 * (1 - p) * math.log(1 - p)), rel=1e-10)
    assert got > 0 > gradient(binary_cross_entropy, x, y).item()
    # just above the corrupted threshold the pair stays a (margin) positive
    x_kept = torch.tensor([[math.log(0.41 / 0.59)]])
    assert gradient(mllsc_loss, x_kept, y).item() < 0


def test_mllsc_gradient_closed_form_and_soft_targets(batch):
    x, hard, soft = batch
    p = torch.sigmoid(x)
    q = torch.sigmoid(x - 1.0)
    margin_pos_grad = (1 - q) ** 2 * (2 * q * torch.log(q) - (1 - q))
    plain_pos_grad = (1 - p) ** 2 * (2 * p * torch.log(p) - (1 - p))
    neg_grad = p ** 2 * (p - 2 * (1 - p) * torch.log(1 - p))
    expected = torch.where(hard == 1, torch.where(p < 0.4, neg_grad, margin_pos_grad),
                           torch.where(p > 0.55, plain_pos_grad, neg_grad))
    assert torch.allclose(gradient(mllsc_loss, x, hard), expected, atol=1e-10)
    positive = mllsc_loss(x, torch.ones_like(x), reduction="none")
    negative = mllsc_loss(x, torch.zeros_like(x), reduction="none")
    assert torch.allclose(mllsc_loss(x, soft, reduction="none"),
                          soft * positive + (1 - soft) * negative, atol=1e-12)


# ------------------------------------------------------------------------- stability
@pytest.mark.parametrize("name", ["bce", "focal", "asl", "asl_detached", "asl_no_clip", "gce",
                                  "gce_small_q", "mllsc", "forward"])
def test_extreme_logits_are_finite_in_float32(name):
    functions = {
        "bce": binary_cross_entropy, "focal": focal_loss, "asl": asymmetric_loss,
        "asl_detached": lambda x, y, **k: asymmetric_loss(x, y, detach_focusing_weight=True, **k),
        "asl_no_clip": lambda x, y, **k: asymmetric_loss(x, y, clip=0.0, eps=0.0, **k),
        "gce": generalized_cross_entropy,
        "gce_small_q": lambda x, y, **k: generalized_cross_entropy(x, y, q=1e-4, **k),
        "mllsc": mllsc_loss,
        "forward": lambda x, y, **k: forward_corrected_bce(
            x, y, np.array([[[0.8, 0.2], [0.3, 0.7]], [[1.0, 0.0], [0.0, 1.0]]]), **k),
    }
    logits = torch.tensor([[50.0, -50.0], [-50.0, 50.0], [50.0, 50.0], [-50.0, -50.0]],
                          dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 1.0]], dtype=torch.float32)
    value = functions[name](logits, targets)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_bce_at_extremes_matches_closed_form():
    x = torch.tensor([[50.0, -50.0]], dtype=torch.float32)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float32)
    per_pair = binary_cross_entropy(x, y, reduction="none")
    assert torch.allclose(per_pair, torch.tensor([[50.0, 50.0]]).float())
    for fn in (binary_cross_entropy,
               lambda a, b, **k: forward_corrected_bce(a, b, np.tile(np.eye(2), (2, 1, 1)), **k)):
        assert torch.allclose(gradient(fn, x, y), torch.tensor([[1.0, -1.0]]).float())


# ----------------------------------------------------------------- forward correction
def test_forward_corrected_bce_identity_equals_bce(batch):
    x, hard, soft = batch
    identity = torch.eye(2).repeat(x.shape[1], 1, 1)
    for targets in (hard, soft):
        assert torch.allclose(forward_corrected_bce(x, targets, identity, reduction="none"),
                              binary_cross_entropy(x, targets, reduction="none"), atol=1e-12)
        assert torch.allclose(gradient(forward_corrected_bce, x, targets, matrices=identity),
                              torch.sigmoid(x) - targets, atol=1e-12)


def test_forward_corrected_bce_closed_form(batch):
    x, hard, _ = batch
    rho_pos = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.45])
    rho_neg = torch.tensor([0.05, 0.0, 0.2, 0.3, 0.1])
    matrices = torch.stack([torch.stack([1 - rho_neg, rho_neg], -1),
                            torch.stack([rho_pos, 1 - rho_pos], -1)], 1)     # L×2×2
    p = torch.sigmoid(x)
    noisy = (1 - rho_pos) * p + rho_neg * (1 - p)
    expected = -(hard * torch.log(noisy) + (1 - hard) * torch.log(1 - noisy))
    assert torch.allclose(forward_corrected_bce(x, hard, matrices, reduction="none"), expected,
                          atol=1e-12)
    expected_grad = -(hard / noisy - (1 - hard) / (1 - noisy)) * (1 - rho_pos - rho_neg) * p * (1 - p)
    assert torch.allclose(gradient(forward_corrected_bce, x, hard, matrices=matrices),
                          expected_grad, atol=1e-12)
    transition = MultiTransition(num_labels=5, matrices=matrices.numpy())
    assert transition(x, hard).item() == pytest.approx(expected.mean().item(), rel=1e-12)


def test_forward_corrected_bce_rejects_bad_matrices(batch):
    x, hard, _ = batch
    with pytest.raises(ValueError, match="L×2×2"):
        forward_corrected_bce(x, hard, torch.eye(2).repeat(3, 1, 1))
    bad = torch.eye(2).repeat(5, 1, 1)
    bad[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="row-stochastic"):
        forward_corrected_bce(x, hard, bad)


# -------------------------------------------------------------------- Multi-T estimate
def synthetic_noisy_labels(seed: int, num_instances: int = 40000):
    """Clean labels with two strongly correlated pairs (0,1) and (2,3), flipped with known
    per-label rates, and near-oracle probabilities for the clean labels."""
    rng = np.random.default_rng(seed)
    clean = np.zeros((num_instances, 4), dtype=np.uint8)
    for first, prevalence in ((0, 0.3), (2, 0.15)):
        clean[:, first] = rng.random(num_instances) < prevalence
        copy = rng.random(num_instances) < 0.8
        clean[:, first + 1] = np.where(copy, clean[:, first], rng.random(num_instances) < 0.25)
    rho_pos = np.array([0.2, 0.1, 0.3, 0.0])
    rho_neg = np.array([0.05, 0.1, 0.02, 0.15])
    flip_probability = np.where(clean == 1, rho_pos, rho_neg)
    observed = np.where(rng.random(clean.shape) < flip_probability, 1 - clean, clean)
    probabilities = np.where(clean == 1, rng.uniform(0.7, 0.99, clean.shape),
                             rng.uniform(0.01, 0.3, clean.shape))
    wrong = rng.random(clean.shape) < 0.01                      # 1 % confidently wrong
    probabilities = np.where(wrong, 1.0 - probabilities, probabilities)
    return clean, observed.astype(np.uint8), probabilities, rho_pos, rho_neg


def test_multit_recovers_known_flip_rates():
    _, observed, probabilities, rho_pos, rho_neg = synthetic_noisy_labels(seed=7)
    estimate = MultiTransition.estimate(probabilities, observed)
    assert estimate.fitted
    assert estimate.matrices.shape == (4, 2, 2)
    assert np.allclose(estimate.matrices.sum(-1), 1.0)
    assert estimate.partners[:, 0].tolist() == [1, 0, 3, 2]     # the correlated partner
    # tolerance 0.03 absolute on every rate (sampling error at N = 40 000 is ≈ 0.01)
    assert np.abs(estimate.rho_positive - rho_pos).max() < 0.03, estimate.rho_positive
    assert np.abs(estimate.rho_negative - rho_neg).max() < 0.03, estimate.rho_negative
    more = MultiTransition.estimate(probabilities, observed, num_partners=3)
    assert np.abs(more.rho_positive - rho_pos).max() < 0.03
    assert np.abs(more.rho_negative - rho_neg).max() < 0.03


def test_multit_uncorrelated_labels_keep_identity_and_rates_are_clipped():
    rng = np.random.default_rng(3)
    clean = (rng.random((20000, 3)) < 0.3).astype(np.uint8)     # independent labels
    observed = np.where(rng.random(clean.shape) < 0.2, 1 - clean, clean)
    probabilities = np.where(clean == 1, 0.9, 0.1)
    estimate = MultiTransition.estimate(probabilities, observed)
    assert np.allclose(estimate.matrices, np.eye(2))           # not identifiable -> identity
    garbage = MultiTransition.estimate(rng.random((500, 6)), (rng.random((500, 6)) < 0.5),
                                       min_separation=0.0, min_count=1)
    assert garbage.rho_positive.min() >= 0 and garbage.rho_positive.max() <= 0.49
    assert garbage.rho_negative.min() >= 0 and garbage.rho_negative.max() <= 0.49


def test_multit_input_validation():
    with pytest.raises(ValueError, match="equal N×L"):
        MultiTransition.estimate(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="row 1, label 0"):
        MultiTransition.estimate(np.zeros((3, 2)), np.array([[0, 1], [2, 0], [1, 1]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MultiTransition.estimate(np.full((3, 2), 1.5), np.zeros((3, 2)))


# --------------------------------------------------------------------------------- SCE
def test_symmetric_cross_entropy_hand_computed():
    # x = 0: p = 1/2, BCE = log 2 for either label, RCE = -A·1/2 = 2 (A = -4)
    zero = torch.zeros(1, 2)
    assert symmetric_cross_entropy(zero, torch.tensor([[1.0, 0.0]]), reduction="none").flatten().tolist() == \
        pytest.approx([0.1 * math.log(2) + 2.0] * 2)
    # x = log 3: p = 3/4. y = 1: α·log(4/3) + β·4·(1/4); y = 0: α·log 4 + β·4·(3/4); t = 0.5 mixes them
    x = torch.full((1, 3), math.log(3.0))
    values = symmetric_cross_entropy(x, torch.tensor([[1.0, 0.0, 0.5]]), alpha=0.5, beta=2.0, reduction="none")
    positive, negative = 0.5 * math.log(4 / 3) + 2.0 * 1.0, 0.5 * math.log(4.0) + 2.0 * 3.0
    assert values.flatten().tolist() == pytest.approx([positive, negative, (positive + negative) / 2])
    # β = 0 is α·BCE; α = 0 is the bounded reverse term −A·|p − y|
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 4
    hard = (logits > 0.5).double()
    assert symmetric_cross_entropy(logits, hard, alpha=1.0, beta=0.0).item() == pytest.approx(
        binary_cross_entropy(logits, hard).item())
    assert symmetric_cross_entropy(logits, hard, alpha=0.0, beta=1.0, reduction="none").flatten().tolist() == \
        pytest.approx((4.0 * (torch.sigmoid(logits) - hard).abs()).flatten().tolist())
    with pytest.raises(ValueError, match="log_zero"):
        symmetric_cross_entropy(zero, zero, log_zero=0.0)


# ----------------------------------------------------------------- inputs / registry
def test_pair_inputs_are_validated(batch):
    x, hard, _ = batch
    for fn in PAIR_LOSSES.values():
        with pytest.raises(ValueError, match="same B×L shape"):
            fn(x, hard[:, :3])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            fn(x, hard * 2)
        with pytest.raises(ValueError, match="reduction"):
            fn(x, hard, reduction="average")
        assert fn(x, hard, reduction="none").shape == x.shape
        assert fn(x, hard, reduction="sum").item() == pytest.approx(
            fn(x, hard, reduction="none").sum().item())


def test_pair_loss_for_binds_config_hyperparameters(batch):
    x, hard, _ = batch
    config = TrialConfig(method="focal", focal_gamma=1.0, focal_alpha=0.7)
    assert pair_loss_for(config)(x, hard).item() == pytest.approx(
        focal_loss(x, hard, gamma=1.0, alpha=0.7).item())
    config = TrialConfig(method="asl")
    assert pair_loss_for(config)(x, hard).item() == pytest.approx(asymmetric_loss(x, hard).item())
    assert pair_loss_for(config, "mllsc")(x, hard, correction=False).item() == pytest.approx(
        mllsc_loss(x, hard, correction=False).item())
    with pytest.raises(ValueError, match="method"):
        pair_loss_for(TrialConfig(method="multit"))


def test_asl_detach_focusing_switch_reaches_the_loss(batch):
    x, hard, _ = batch
    def gradient(config):
        logits = x.clone().requires_grad_(True)
        value = pair_loss_for(config)(logits, hard)
        value.backward()
        return value.detach(), logits.grad
    full_value, full_grad = gradient(TrialConfig(method="asl"))
    detached_value, detached_grad = gradient(TrialConfig(method="asl", asl_detach_focusing=True))
    assert torch.allclose(full_value, detached_value)               # same loss value
    assert not torch.allclose(full_grad, detached_grad)              # different gradient convention
    reference = x.clone().requires_grad_(True)
    asymmetric_loss(reference, hard, detach_focusing_weight=True).backward()
    assert torch.allclose(detached_grad, reference.grad)
