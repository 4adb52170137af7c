"""The fast backbone paths compute what the straightforward ones do (outputs and gradients):

* `bidirectional_lstm` (fused kernel on padded series, reverse direction run within each length)
  against `nn.LSTM` on a `PackedSequence`;
* FlexCare's fusion on packed real rows with per-block attention against the same layers run
  on the padded sequence under one dense N×N mask built from the module docstring's rules;
* the explicit attention of training mode against SDPA;
* `miracl_grid.trainables.backbones.dropout` against the definition of dropout (rate, scale, gradient,
  independence, seeding).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from miracl_grid.trainables.backbones.dropout import Dropout, dropout
from miracl_grid.trainables.backbones.encoders import MultiHeadAttention, TransformerLayer, bidirectional_lstm, \
    reverse_within_length
from miracl_grid.trainables.backbones.flexcare import FusionLayout, block_attention, fuse

TOLERANCE = dict(atol=2e-6, rtol=1e-5)


def test_reverse_within_length_hand_case():
    values = torch.arange(8.0).view(2, 4, 1)
    reversed_ = reverse_within_length(values, torch.tensor([3, 0]))
    assert reversed_.squeeze(-1).tolist() == [[2.0, 1.0, 0.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    torch.testing.assert_close(reverse_within_length(reversed_, torch.tensor([3, 0])), values)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_bidirectional_lstm_equals_packed_sequence(layers):
    torch.manual_seed(layers)
    lstm = nn.LSTM(5, 7, num_layers=layers, batch_first=True, bidirectional=True).train()
    length = torch.tensor([6, 1, 0, 4, 6, 2])
    steps = 6
    real = (torch.arange(steps)[None, :] < length[:, None])[..., None]
    series = torch.randn(6, steps, 5) * real
    projection_outputs, projection_last = torch.randn(6, steps, 14), torch.randn(6, 14)

    def loss(outputs, last):
        present = (length > 0)[:, None]
        return (outputs * real * projection_outputs).sum() + (last * present * projection_last).sum()

    fast_input = series.clone().requires_grad_()
    fast_outputs, fast_last = bidirectional_lstm(lstm, fast_input, length)
    loss(fast_outputs, fast_last).backward()
    fast_grads = [p.grad.clone() for p in lstm.parameters()]
    lstm.zero_grad()

    reference_input = series.clone().requires_grad_()
    packed = pack_padded_sequence(reference_input, length.clamp(min=1), batch_first=True, enforce_sorted=False)
    outputs, (final, _) = lstm(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=steps)
    last = torch.cat([final[-2], final[-1]], dim=-1)
    loss(outputs, last).backward()

    torch.testing.assert_close(fast_outputs * real, outputs * real, **TOLERANCE)
    present = (length > 0)[:, None]
    torch.testing.assert_close(fast_last * present, last * present, **TOLERANCE)
    torch.testing.assert_close(fast_input.grad, reference_input.grad, **TOLERANCE)
    for fast, reference in zip(fast_grads, (p.grad for p in lstm.parameters())):
        torch.testing.assert_close(fast, reference, **TOLERANCE)


def dense_flexcare_mask(ehr_mask: torch.Tensor, note_mask: torch.Tensor) -> torch.Tensor:
    """B×N×N bool over [task, c_both, c_ehr, c_note, EHR (T), note (S)] straight from the rules of
    the flexcare module docstring (True = may attend; every row may attend itself)."""
    size, steps = ehr_mask.shape
    tokens = note_mask.shape[1]
    length = 4 + steps + tokens
    is_ehr = torch.zeros(length, dtype=torch.bool)
    is_ehr[4:4 + steps] = True
    is_note = torch.zeros(length, dtype=torch.bool)
    is_note[4 + steps:] = True
    structure = torch.zeros(length, length, dtype=torch.bool)
    structure[0] = True
    structure[1] = is_ehr | is_note
    structure[2] = is_ehr
    structure[3] = is_note
    structure[4:4 + steps] = is_ehr
    structure[4 + steps:] = is_note
    valid_key = torch.cat([torch.ones(size, 4, dtype=torch.bool), ehr_mask, note_mask], dim=1)
    return (structure[None] & valid_key[:, None, :]) | torch.eye(length, dtype=torch.bool)[None]


@pytest.mark.parametrize("dropout_p", [0.0, 1e-12], ids=["eval_kernel", "explicit_training_attention"])
def test_block_fusion_equals_dense_masked_fusion(dropout_p):
    """Packed rows + per-block attention == padded sequence + dense mask, on every real row, with
    gradients; dropout 1e-12 runs the training-mode attention (its mask keeps everything)."""
    torch.manual_seed(0)
    hidden, size = 8, 5
    layers = nn.ModuleList(TransformerLayer(hidden, 2, dropout_p) for _ in range(2)).train(dropout_p > 0)
    ehr_length, note_length = torch.tensor([3, 0, 2, 3, 0]), torch.tensor([4, 2, 0, 1, 0])
    ehr_mask = torch.arange(3)[None] < ehr_length[:, None]
    note_mask = torch.arange(4)[None] < note_length[:, None]
    prefix, ehr, note = torch.randn(size, 4, hidden), torch.randn(size, 3, hidden), torch.randn(size, 4, hidden)

    sequence = torch.cat([prefix, ehr, note], dim=1).requires_grad_()
    dense = sequence
    for layer in layers:
        dense = layer(dense, dense_flexcare_mask(ehr_mask, note_mask))
    real = torch.cat([torch.ones(size, 4, dtype=torch.bool), ehr_mask, note_mask], dim=1)
    weights = torch.randn(size, 4 + 3 + 4, hidden)
    (dense * weights * real[..., None]).sum().backward()
    dense_grads = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad()

    layout = FusionLayout.of(ehr_mask, note_mask)
    parts = [part.clone().requires_grad_() for part in (prefix, ehr, note)]
    rows = layout.pack(*parts)
    for layer in layers:
        rows = layer.transform(rows, lambda rows, layer=layer: block_attention(layer.attention, rows, layout))
    (rows * layout.pack(weights[:, :4], weights[:, 4:7], weights[:, 7:])).sum().backward()

    torch.testing.assert_close(rows, layout.pack(dense[:, :4], dense[:, 4:7], dense[:, 7:]), **TOLERANCE)
    for fast, reference in zip(dense_grads, (p.grad for p in layers.parameters())):
        torch.testing.assert_close(fast, reference, **TOLERANCE)
    for part, reference in zip(parts, (sequence.grad[:, :4], sequence.grad[:, 4:7], sequence.grad[:, 7:])):
        torch.testing.assert_close(part.grad, reference, **TOLERANCE)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("dropout_p", [0.0, 1e-12], ids=["eval_kernel", "explicit_training_attention"])
def test_fuse_equals_the_dense_fusion_on_the_prefix_rows(depth, dropout_p):
    """`fuse` (last layer on the prefix rows only) == every layer on the padded sequence with the
    dense mask, read at the 4 prefix positions: outputs, parameter and input gradients."""
    torch.manual_seed(2)
    hidden, size = 8, 5
    layers = nn.ModuleList(TransformerLayer(hidden, 2, dropout_p) for _ in range(depth)).train(dropout_p > 0)
    ehr_length, note_length = torch.tensor([3, 0, 2, 3, 0]), torch.tensor([4, 2, 0, 1, 0])
    ehr_mask = torch.arange(3)[None] < ehr_length[:, None]
    note_mask = torch.arange(4)[None] < note_length[:, None]
    prefix, ehr, note = torch.randn(size, 4, hidden), torch.randn(size, 3, hidden), torch.randn(size, 4, hidden)
    weights = torch.randn(size, 4, hidden)

    sequence = torch.cat([prefix, ehr, note], dim=1).requires_grad_()
    dense = sequence
    for layer in layers:
        dense = layer(dense, dense_flexcare_mask(ehr_mask, note_mask))
    (dense[:, :4] * weights).sum().backward()
    dense_grads = [p.grad.clone() for p in layers.parameters()]
    layers.zero_grad()

    layout = FusionLayout.of(ehr_mask, note_mask)
    parts = [part.clone().requires_grad_() for part in (prefix, ehr, note)]
    fused = fuse(layers, layout, layout.pack(*parts))
    (fused * weights).sum().backward()

    assert fused.shape == (size, 4, hidden)
    torch.testing.assert_close(fused, dense[:, :4], **TOLERANCE)
    for fast, reference in zip((p.grad for p in layers.parameters()), dense_grads):
        torch.testing.assert_close(fast, reference, **TOLERANCE)
    real = torch.cat([torch.ones(size, 4, dtype=torch.bool), ehr_mask, note_mask], dim=1)[..., None]
    torch.testing.assert_close(torch.cat([part.grad for part in parts], dim=1), sequence.grad * real, **TOLERANCE)


def test_training_attention_equals_sdpa():
    torch.manual_seed(1)
    attention = MultiHeadAttention(8, 2, dropout=1e-12)
    queries, keys = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    allowed = torch.rand(3, 4, 6) > 0.4
    allowed[..., 0] = True
    training = attention.train()(queries, keys, allowed)
    torch.testing.assert_close(training, attention.eval()(queries, keys, allowed), **TOLERANCE)
    with pytest.raises(AssertionError):      # the mask is applied: dropping it changes the output
        torch.testing.assert_close(training, attention.eval()(queries, keys, None), **TOLERANCE)


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_rescales():
    p, count = 0.3, 400_000
    torch.manual_seed(0)
    values = torch.full((count,), 2.0, requires_grad=True)
    dropped = dropout(values, p)
    kept = dropped != 0
    share = kept.double().mean().item()
    assert abs(share - (1 - p)) < 5 * ((p * (1 - p) / count) ** 0.5)        # binomial, 5 sigma
    torch.testing.assert_close(dropped[kept], torch.full((int(kept.sum()),), 2.0 / (1 - p)))
    dropped.sum().backward()
    torch.testing.assert_close(values.grad, kept.float() / (1 - p))
    # neighbouring elements are independent: P(both kept) = (1 - p)^2
    pairs = (kept[:-1] & kept[1:]).double().mean().item()
    assert abs(pairs - (1 - p) ** 2) < 5 * (((1 - p) ** 2 * (1 - (1 - p) ** 2) / count) ** 0.5)


def test_dropout_is_seeded_by_torch_and_off_outside_training():
    values = torch.randn(50, 40)
    torch.manual_seed(7)
    first = dropout(values, 0.5)
    second = dropout(values, 0.5)
    torch.manual_seed(7)
    assert torch.equal(dropout(values, 0.5), first)                # seeded runs repeat
    assert not torch.equal(first, second)                          # consecutive calls differ
    assert dropout(values, 0.5, training=False) is values
    module = Dropout(0.5).eval()
    assert module(values) is values
    assert Dropout(1.0).train()(values).abs().sum() == 0
