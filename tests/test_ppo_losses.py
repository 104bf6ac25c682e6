"""Each function of rlhf_trl.ppo.losses, .advantages, .masks and .ema against a naive reference written with plain
Python loops over rows and tokens, on random right-padded batches, plus hand-made cases for clipping, gradients and
masks."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_trl.generation import completion_mask, has_eos
from rlhf_trl.ppo.advantages import gae_advantages, kl_estimate, shape_scores, shaped_rewards
from rlhf_trl.ppo.ema import ema_update
from rlhf_trl.ppo.losses import entropy_from_logits, kl_loss, logprobs_from_logits, policy_loss, value_loss
from rlhf_trl.ppo.masks import masked_mean, masked_var, masked_whiten

EOS, PAD = 2, 0
DTYPE = torch.float64  # the references use Python floats (double precision); compare at tight tolerances


# ----------------------------------------------------------------------------------------------------------------
# Random batches and naive references (independent of the implementation: Python floats, loops, math module)
# ----------------------------------------------------------------------------------------------------------------


def random_lengths(batch_size: int, length: int, generator: torch.Generator) -> list[int]:
    """Real lengths in [1, length], always including a length-1 row and a full row."""
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator).tolist()
    lengths[0], lengths[-1] = 1, length
    return lengths


def right_padded_mask(lengths: list[int], length: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, row_length in enumerate(lengths):
        for t in range(row_length):
            mask[row, t] = 1
    return mask


def random_batch(seed: int, batch_size: int = 6, length: int = 9):
    generator = torch.Generator().manual_seed(seed)
    lengths = random_lengths(batch_size, length, generator)
    mask = right_padded_mask(lengths, length)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=DTYPE) * scale

    return generator, lengths, mask, randn


def scramble_padding(tensor: torch.Tensor, mask: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """A copy of ``tensor`` whose padded positions hold large random values (real positions unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 100 + 37
    return torch.where(mask.bool(), tensor, noise)


def as_rows(tensor: torch.Tensor) -> list[list[float]]:
    return tensor.detach().tolist()


def reference_masked_mean(values, mask) -> float:
    total, count = 0.0, 0
    for value_row, mask_row in zip(as_rows(values), as_rows(mask), strict=True):
        for value, real in zip(value_row, mask_row, strict=True):
            if real:
                total += value
                count += 1
    return total / count


def reference_real_entries(values, mask) -> list[float]:
    return [
        value
        for value_row, mask_row in zip(as_rows(values), as_rows(mask), strict=True)
        for value, real in zip(value_row, mask_row, strict=True)
        if real
    ]


def reference_gae(values, rewards, lengths, gamma, lam):
    """A_t = sum_l (gamma * lam)^l * delta_{t+l} written as an explicit double sum (not the backward recursion),
    with delta_t = r_t + gamma * V_{t+1} - V_t and V = 0 after the last real token."""
    values, rewards = as_rows(values), as_rows(rewards)
    length = len(values[0])
    advantages = [[0.0] * length for _ in values]
    returns = [[0.0] * length for _ in values]
    for row, row_length in enumerate(lengths):
        deltas = []
        for t in range(row_length):
            next_value = values[row][t + 1] if t + 1 < row_length else 0.0
            deltas.append(rewards[row][t] + gamma * next_value - values[row][t])
        for t in range(row_length):
            advantage = 0.0
            for later in range(t, row_length):
                advantage += (gamma * lam) ** (later - t) * deltas[later]
            advantages[row][t] = advantage
            returns[row][t] = advantage + values[row][t]
    return torch.tensor(advantages, dtype=DTYPE), torch.tensor(returns, dtype=DTYPE)


def reference_log_softmax_row(logits: list[float], temperature: float) -> list[float]:
    scaled = [logit / temperature for logit in logits]
    largest = max(scaled)
    log_normaliser = largest + math.log(sum(math.exp(s - largest) for s in scaled))
    return [s - log_normaliser for s in scaled]


# ----------------------------------------------------------------------------------------------------------------
# completion_mask and has_eos
# ----------------------------------------------------------------------------------------------------------------


def reference_completion_mask(ids: torch.Tensor, eos: int) -> torch.Tensor:
    rows = []
    for id_row in ids.tolist():
        row, ended = [], False
        for token in id_row:
            row.append(0 if ended else 1)
            if token == eos:
                ended = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def test_completion_mask_hand_made_rows():
    ids = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # EOS in the middle
            [5, 6, 7, 8, EOS],  # EOS at the end
            [5, 6, 7, 8, 9],  # no EOS: cut at the length limit, all real
            [EOS, PAD, PAD, PAD, PAD],  # EOS first: the answer is just the EOS
            [5, EOS, 7, EOS, 9],  # tokens after the first EOS are padding whatever they are
            [5, PAD, 6, EOS, PAD],  # a sampled pad id before the EOS is a real token
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0],
        ]
    )
    mask = completion_mask(ids, eos_token_id=EOS, pad_token_id=PAD)
    assert mask.dtype == torch.long
    assert torch.equal(mask, expected)
    assert has_eos(ids, EOS).tolist() == [True, True, False, True, True, True]


def test_completion_mask_pad_equal_to_eos():
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [5, 6, 7, 8, 9], [EOS, EOS, EOS, EOS, EOS]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(completion_mask(ids, eos_token_id=EOS, pad_token_id=EOS), expected)
    assert has_eos(ids, EOS).tolist() == [True, False, True]


@pytest.mark.parametrize("seed", range(3))
def test_completion_mask_random_vs_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (16, 12), generator=generator)  # EOS (2) appears often, sometimes never in a row
    assert torch.equal(completion_mask(ids, EOS, PAD), reference_completion_mask(ids, EOS))
    expected_has_eos = [EOS in row for row in ids.tolist()]
    assert has_eos(ids, EOS).tolist() == expected_has_eos


def test_completion_mask_rejects_non_2d():
    with pytest.raises(ValueError, match="batch, length"):
        completion_mask(torch.tensor([5, EOS]), EOS, PAD)


# ----------------------------------------------------------------------------------------------------------------
# masked_mean, masked_var, masked_whiten
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_masked_mean_vs_reference(seed):
    _, lengths, mask, randn = random_batch(seed)
    values = randn(*mask.shape)
    assert masked_mean(values, mask).item() == pytest.approx(reference_masked_mean(values, mask), rel=1e-12)
    per_row = masked_mean(values, mask, dim=1)
    for row, row_length in enumerate(lengths):
        expected = sum(values[row, :row_length].tolist()) / row_length
        assert per_row[row].item() == pytest.approx(expected, rel=1e-12)
    # mask given as bool, long or float: same result
    for mask_variant in (mask.bool(), mask.float(), mask.to(DTYPE)):
        assert torch.allclose(masked_mean(values, mask_variant), masked_mean(values, mask))
    assert torch.equal(masked_mean(scramble_padding(values, mask), mask), masked_mean(values, mask))


def test_masked_mean_along_batch_dimension_and_empty_slice():
    values = torch.tensor([[1.0, 2.0, 3.0], [5.0, 7.0, 9.0]], dtype=DTYPE)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask, dim=0).tolist() == [3.0, 2.0, 0.0]  # the empty column gives 0, not NaN
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 5.0]


def test_masked_mean_shape_mismatch():
    with pytest.raises(ValueError, match="Shape mismatch"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))


@pytest.mark.parametrize("seed", range(3))
def test_masked_var_vs_reference(seed):
    _, _, mask, randn = random_batch(seed)
    values = randn(*mask.shape, scale=3.0) + 2.0
    real = reference_real_entries(values, mask)
    mean = sum(real) / len(real)
    population = sum((v - mean) ** 2 for v in real) / len(real)
    sample = sum((v - mean) ** 2 for v in real) / (len(real) - 1)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(population, rel=1e-12)
    assert masked_var(values, mask, unbiased=True).item() == pytest.approx(sample, rel=1e-12)
    assert masked_var(scramble_padding(values, mask), mask).item() == pytest.approx(sample, rel=1e-12)


def test_masked_var_unbiased_needs_two_entries():
    values = torch.tensor([[4.0, 9.0]])
    mask = torch.tensor([[1, 0]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(values, mask, unbiased=True)
    assert masked_var(values, mask, unbiased=False).item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_masked_whiten_mean_zero_var_one(seed):
    _, _, mask, randn = random_batch(seed)
    values = randn(*mask.shape, scale=5.0) + 3.0
    whitened = masked_whiten(values, mask)
    real = reference_real_entries(whitened, mask)
    mean = sum(real) / len(real)
    variance = sum((v - mean) ** 2 for v in real) / len(real)
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert variance == pytest.approx(1.0, rel=1e-6)
    assert torch.all(whitened[mask == 0] == 0)
    # reference: (x - mean) / sqrt(var + 1e-8) over real entries
    original = reference_real_entries(values, mask)
    original_mean = sum(original) / len(original)
    original_variance = sum((v - original_mean) ** 2 for v in original) / len(original)
    expected = [(v - original_mean) / math.sqrt(original_variance + 1e-8) for v in original]
    assert real == pytest.approx(expected, rel=1e-12)
    assert torch.equal(masked_whiten(scramble_padding(values, mask), mask), whitened)


def test_masked_whiten_without_shifting_the_mean():
    _, _, mask, randn = random_batch(7)
    values = randn(*mask.shape, scale=5.0) + 3.0
    whitened = masked_whiten(values, mask, shift_mean=False)
    real = reference_real_entries(whitened, mask)
    original = reference_real_entries(values, mask)
    mean = sum(real) / len(real)
    assert mean == pytest.approx(sum(original) / len(original), rel=1e-10)
    assert sum((v - mean) ** 2 for v in real) / len(real) == pytest.approx(1.0, rel=1e-6)
    assert torch.all(whitened[mask == 0] == 0)


def test_masked_whiten_single_real_entry_is_zero():
    values = torch.tensor([[4.0, 9.0, -1.0]])
    assert masked_whiten(values, torch.tensor([[1, 0, 0]])).tolist() == [[0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------------------------------
# logprobs_from_logits, entropy_from_logits
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_logprobs_from_logits_vs_manual_softmax(temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, dtype=DTYPE) * 4
    tokens = torch.randint(0, 11, (3, 5), generator=generator)
    logprobs = logprobs_from_logits(logits, tokens, temperature=temperature)
    assert logprobs.shape == (3, 5)
    for row in range(3):
        for t in range(5):
            log_softmax = reference_log_softmax_row(logits[row, t].tolist(), temperature)
            assert logprobs[row, t].item() == pytest.approx(log_softmax[tokens[row, t].item()], rel=1e-12)


def test_logprobs_from_logits_low_precision_and_gradient():
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 50, generator=generator) * 5).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 50, (2, 4), generator=generator)
    logprobs = logprobs_from_logits(logits, tokens, temperature=0.9)
    assert logprobs.dtype == torch.float32  # computed in float32 even for bf16 logits
    expected = torch.log_softmax(logits.detach().float() / 0.9, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs, expected, atol=1e-6)
    logprobs.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


def test_logprobs_from_logits_bad_arguments():
    logits, tokens = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="Expected logits"):
        logprobs_from_logits(logits, tokens[:, :2])


@pytest.mark.parametrize("chunk_rows", [1, 2, 3])
def test_logprobs_and_entropy_in_chunks_equal_the_whole_batch(chunk_rows, monkeypatch):
    """Rows are processed in chunks that fit CHUNK_ELEMENTS (one row at the least, a last chunk that is short): the
    values and the gradient are those of the whole batch at once."""
    from rlhf_trl.ppo import losses

    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(5, 4, 7, generator=generator, dtype=DTYPE) * 3).requires_grad_()
    tokens = torch.randint(0, 7, (5, 4), generator=generator)
    whole_logprobs = logprobs_from_logits(logits, tokens, 0.8)
    whole_entropy = entropy_from_logits(logits, 0.8)
    (whole_gradient,) = torch.autograd.grad((whole_logprobs + whole_entropy).sum(), logits)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_rows * 4 * 7 + 3)
    chunked_logprobs = logprobs_from_logits(logits, tokens, 0.8)
    chunked_entropy = entropy_from_logits(logits, 0.8)
    (chunked_gradient,) = torch.autograd.grad((chunked_logprobs + chunked_entropy).sum(), logits)
    assert torch.allclose(chunked_logprobs, whole_logprobs, rtol=0, atol=1e-14)
    assert torch.allclose(chunked_entropy, whole_entropy, rtol=0, atol=1e-14)
    assert torch.allclose(chunked_gradient, whole_gradient, rtol=0, atol=1e-14)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 1)  # below one row: still one row at a time
    assert torch.allclose(logprobs_from_logits(logits, tokens, 0.8), whole_logprobs, rtol=0, atol=1e-14)


def test_chunked_backward_joins_the_chunks_gradients_once(monkeypatch):
    """The chunks are a split of the batch, not slices of it: a split's backward joins the chunks' gradients into one
    tensor, while every slice's backward fills a zero tensor of the whole batch's size (with a 50k vocabulary that
    doubled the update's time on CPU, BENCHMARKS.md)."""
    from rlhf_trl.ppo import losses

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 1)  # one row per chunk: six chunks
    logits = torch.randn(6, 3, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (6, 3))
    for output in (logprobs_from_logits(logits, tokens, 0.7), entropy_from_logits(logits, 0.7)):
        names, pending, seen = [], [output.grad_fn], set()
        while pending:
            node = pending.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            names.append(type(node).__name__)
            pending.extend(next_node for next_node, _ in node.next_functions)
        assert names.count("SplitBackward0") == 1 and "SliceBackward0" not in names, names


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_entropy_from_logits_vs_manual_softmax(temperature):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 9, generator=generator, dtype=DTYPE) * 3
    entropy = entropy_from_logits(logits, temperature=temperature)
    assert entropy.shape == (2, 4)
    for row in range(2):
        for t in range(4):
            log_softmax = reference_log_softmax_row(logits[row, t].tolist(), temperature)
            expected = -sum(math.exp(lp) * lp for lp in log_softmax)
            assert entropy[row, t].item() == pytest.approx(expected, rel=1e-12)


def test_entropy_extremes_and_temperature():
    uniform = torch.zeros(1, 2, 13, dtype=DTYPE)
    assert torch.allclose(entropy_from_logits(uniform), torch.full((1, 2), math.log(13), dtype=DTYPE))
    peaked = torch.tensor([[[0.0, 0.0, 60.0]]], dtype=DTYPE)
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-20)
    logits = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    # a lower temperature sharpens the distribution: lower entropy
    assert torch.all(entropy_from_logits(logits, 0.5) < entropy_from_logits(logits, 1.0))
    assert torch.all(entropy_from_logits(logits, 1.0) < entropy_from_logits(logits, 2.0))


# ----------------------------------------------------------------------------------------------------------------
# kl_estimate, kl_loss
# ----------------------------------------------------------------------------------------------------------------


def reference_kl(logprob: float, ref_logprob: float, estimator: str) -> float:
    if estimator == "k1":
        return logprob - ref_logprob
    if estimator == "k2":
        return 0.5 * (logprob - ref_logprob) ** 2
    return math.exp(ref_logprob - logprob) - 1 - (ref_logprob - logprob)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimate_vs_formulas(estimator):
    generator = torch.Generator().manual_seed(4)
    logprobs = -torch.rand(4, 6, generator=generator, dtype=DTYPE) * 5
    ref_logprobs = -torch.rand(4, 6, generator=generator, dtype=DTYPE) * 5
    kl = kl_estimate(logprobs, ref_logprobs, estimator)
    for row in range(4):
        for t in range(6):
            expected = reference_kl(logprobs[row, t].item(), ref_logprobs[row, t].item(), estimator)
            assert kl[row, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_k2_k3_nonnegative_and_zero_at_equality():
    log_ratios = torch.linspace(-8, 8, 401, dtype=DTYPE).unsqueeze(0)
    ref_logprobs = torch.full_like(log_ratios, -3.0)
    for estimator in ("k2", "k3"):
        kl = kl_estimate(ref_logprobs + log_ratios, ref_logprobs, estimator)
        assert torch.all(kl >= 0)
        assert torch.all(kl_estimate(ref_logprobs, ref_logprobs, estimator) == 0)
    assert torch.any(kl_estimate(ref_logprobs + log_ratios, ref_logprobs, "k1") < 0)  # k1 can be negative


def test_k1_k3_unbiased_k2_biased_on_exact_expectation():
    """Enumerate a small categorical policy: E_policy[k1] = E_policy[k3] = KL(policy || reference) exactly."""
    generator = torch.Generator().manual_seed(5)
    policy_logprobs = torch.log_softmax(torch.randn(1, 7, generator=generator, dtype=DTYPE) * 2, dim=-1)
    ref_logprobs = torch.log_softmax(torch.randn(1, 7, generator=generator, dtype=DTYPE) * 2, dim=-1)
    policy_probs = policy_logprobs.exp()
    true_kl = (policy_probs * (policy_logprobs - ref_logprobs)).sum().item()
    expectations = {
        estimator: (policy_probs * kl_estimate(policy_logprobs, ref_logprobs, estimator)).sum().item()
        for estimator in ("k1", "k2", "k3")
    }
    assert expectations["k1"] == pytest.approx(true_kl, rel=1e-12)
    assert expectations["k3"] == pytest.approx(true_kl, rel=1e-12)
    assert expectations["k2"] != pytest.approx(true_kl, rel=1e-3)


def test_kl_estimate_bad_arguments():
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        kl_estimate(torch.zeros(2, 3), torch.zeros(2, 3), "k4")
    with pytest.raises(ValueError, match="Shape mismatch"):
        kl_estimate(torch.zeros(2, 3), torch.zeros(2, 4), "k1")


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_loss_is_masked_mean_of_estimate(estimator):
    _, _, mask, randn = random_batch(6)
    logprobs, ref_logprobs = randn(*mask.shape) - 2, randn(*mask.shape) - 2
    total, count = 0.0, 0
    for row in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[row, t]:
                total += reference_kl(logprobs[row, t].item(), ref_logprobs[row, t].item(), estimator)
                count += 1
    loss = kl_loss(logprobs, ref_logprobs, mask, estimator)
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    scrambled = kl_loss(
        scramble_padding(logprobs, mask), scramble_padding(ref_logprobs, mask, seed=9), mask, estimator
    )
    assert scrambled.item() == pytest.approx(loss.item(), rel=1e-12)


def test_kl_loss_expected_gradients():
    """With tokens sampled from the policy, the expected gradient of each estimator (documented in kl_loss):
    k1 -> 0, k2 -> grad KL(policy || reference), k3 -> grad KL(reference || policy). Exact, by enumeration."""
    generator = torch.Generator().manual_seed(7)
    policy_logits = torch.randn(6, generator=generator, dtype=DTYPE)
    ref_logprobs = torch.log_softmax(torch.randn(6, generator=generator, dtype=DTYPE), dim=-1)

    def expected_gradient(estimator):
        logits = policy_logits.clone().requires_grad_()
        logprobs = torch.log_softmax(logits, dim=-1)
        sampling_probs = logprobs.exp().detach()  # the sampling distribution is not differentiated
        expected_loss = sum(
            sampling_probs[token]
            * kl_loss(logprobs[token].view(1, 1), ref_logprobs[token].view(1, 1), torch.ones(1, 1), estimator)
            for token in range(6)
        )
        (gradient,) = torch.autograd.grad(expected_loss, logits)
        return gradient

    def true_gradient(direction):
        logits = policy_logits.clone().requires_grad_()
        logprobs = torch.log_softmax(logits, dim=-1)
        if direction == "reverse":
            divergence = (logprobs.exp() * (logprobs - ref_logprobs)).sum()
        else:
            divergence = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum()
        (gradient,) = torch.autograd.grad(divergence, logits)
        return gradient

    assert torch.allclose(expected_gradient("k1"), torch.zeros(6, dtype=DTYPE), atol=1e-12)
    assert torch.allclose(expected_gradient("k2"), true_gradient("reverse"), atol=1e-12)
    assert torch.allclose(expected_gradient("k3"), true_gradient("forward"), atol=1e-12)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_kl_loss_with_bias_correction_weights_each_token_by_its_ratio(estimator):
    """old_logprobs given: each real token's estimate times exp(logprobs - old_logprobs), averaged over real tokens
    (a naive loop); padding, even huge there, changes nothing; old == new gives the unweighted value."""
    _, _, mask, randn = random_batch(11)
    logprobs, ref_logprobs = randn(*mask.shape) - 2, randn(*mask.shape) - 2
    old_logprobs = logprobs + 0.3 * randn(*mask.shape)
    total, count = 0.0, 0
    for row in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[row, t]:
                ratio = math.exp(logprobs[row, t].item() - old_logprobs[row, t].item())
                total += ratio * reference_kl(logprobs[row, t].item(), ref_logprobs[row, t].item(), estimator)
                count += 1
    loss = kl_loss(logprobs, ref_logprobs, mask, estimator, old_logprobs)
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert loss.item() != pytest.approx(kl_loss(logprobs, ref_logprobs, mask, estimator).item(), rel=1e-3)
    scrambled = kl_loss(logprobs, ref_logprobs, mask, estimator, scramble_padding(old_logprobs, mask, seed=4))
    assert scrambled.item() == pytest.approx(loss.item(), rel=1e-12)
    on_policy = kl_loss(logprobs, ref_logprobs, mask, estimator, logprobs.detach())
    assert on_policy.item() == pytest.approx(kl_loss(logprobs, ref_logprobs, mask, estimator).item(), rel=1e-12)


def test_kl_loss_bias_correction_gives_the_reverse_kl_gradient():
    """On policy (old log-probs = the current ones, detached), the ratio-weighted k3 has the expected gradient of
    KL(policy || reference), where plain k3 has that of KL(reference || policy). Exact, by enumeration."""
    generator = torch.Generator().manual_seed(3)
    policy_logits = torch.randn(6, generator=generator, dtype=DTYPE)
    ref_logprobs = torch.log_softmax(torch.randn(6, generator=generator, dtype=DTYPE), dim=-1)

    def expected_gradient(corrected: bool):
        logits = policy_logits.clone().requires_grad_()
        logprobs = torch.log_softmax(logits, dim=-1)
        sampling_probs = logprobs.exp().detach()
        expected_loss = 0.0
        for token in range(6):
            old = logprobs[token].detach().view(1, 1) if corrected else None
            term = kl_loss(logprobs[token].view(1, 1), ref_logprobs[token].view(1, 1), torch.ones(1, 1), "k3", old)
            expected_loss = expected_loss + sampling_probs[token] * term
        (gradient,) = torch.autograd.grad(expected_loss, logits)
        return gradient

    logits = policy_logits.clone().requires_grad_()
    logprobs = torch.log_softmax(logits, dim=-1)
    (reverse,) = torch.autograd.grad((logprobs.exp() * (logprobs - ref_logprobs)).sum(), logits)
    assert torch.allclose(expected_gradient(True), reverse, atol=1e-12)
    assert not torch.allclose(expected_gradient(False), reverse, atol=1e-3)


def test_kl_loss_bad_arguments():
    with pytest.raises(ValueError, match="Shape mismatch"):
        kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4), "k3")
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), "kl")


# ----------------------------------------------------------------------------------------------------------------
# shaped_rewards
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_shaped_rewards_vs_reference(seed):
    _, lengths, mask, randn = random_batch(seed)
    scores, kl = randn(mask.shape[0]) * 3, randn(*mask.shape)
    kl_coef = 0.1
    rewards = shaped_rewards(scores, kl, mask, kl_coef)
    expected = [[0.0] * mask.shape[1] for _ in lengths]
    for row, row_length in enumerate(lengths):
        for t in range(row_length):
            expected[row][t] = -kl_coef * kl[row, t].item()
        expected[row][row_length - 1] += scores[row].item()
    assert torch.allclose(rewards, torch.tensor(expected, dtype=DTYPE), rtol=0, atol=1e-12)
    assert torch.equal(shaped_rewards(scores, scramble_padding(kl, mask), mask, kl_coef), rewards)


def test_shaped_rewards_score_on_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    scores = torch.tensor([5.0, -2.0, 1.5])
    rewards = shaped_rewards(scores, torch.zeros(3, 4), mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 0.0, 5.0, 0.0], [-2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.5]]


def test_shaped_rewards_bad_arguments():
    with pytest.raises(ValueError, match="at least one real token"):
        shaped_rewards(torch.zeros(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="scores must be"):
        shaped_rewards(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="Shape mismatch"):
        shaped_rewards(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 4), 0.1)


# ----------------------------------------------------------------------------------------------------------------
# shape_scores
# ----------------------------------------------------------------------------------------------------------------


def reference_shaped_score(score, ended, penalty, normalization, clip) -> float:
    if penalty is not None and not ended:
        score -= penalty
    if normalization is not None:
        mean, std = normalization
        score = (score - mean) / (std + 1e-8)
    if clip is not None:
        score = min(max(score, -clip), clip)
    return score


@pytest.mark.parametrize("penalty", [None, 1.5])
@pytest.mark.parametrize("normalization", [None, (0.7, 2.5)])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_shape_scores_vs_reference(penalty, normalization, clip):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(16, generator=generator, dtype=DTYPE) * 4
    ended = torch.rand(16, generator=generator) > 0.4
    shaped = shape_scores(scores, ended, penalty, normalization, clip)
    expected = [
        reference_shaped_score(score, bool(end), penalty, normalization, clip)
        for score, end in zip(scores.tolist(), ended.tolist(), strict=True)
    ]
    assert torch.allclose(shaped, torch.tensor(expected, dtype=DTYPE), rtol=0, atol=1e-12)
    if clip is not None:
        assert shaped.abs().max().item() <= clip
    if penalty is None and normalization is None and clip is None:
        assert torch.equal(shaped, scores)


def test_shape_scores_penalty_before_normalisation():
    # An unended answer scoring 3 with penalty 1: (3 - 1 - mean 1) / std 2 = 0.5, not (3 - 1) / 2 - 1.
    shaped = shape_scores(torch.tensor([3.0, 3.0]), torch.tensor([False, True]), 1.0, (1.0, 2.0))
    assert shaped.tolist() == pytest.approx([0.5, 1.0])


# ----------------------------------------------------------------------------------------------------------------
# gae_advantages
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.0, 0.5), (0.5, 0.3)])
@pytest.mark.parametrize("seed", range(3))
def test_gae_vs_reference(gamma, lam, seed):
    _, lengths, mask, randn = random_batch(seed, batch_size=7, length=10)
    values, rewards = randn(*mask.shape), randn(*mask.shape)
    advantages, returns = gae_advantages(values, rewards, mask, gamma, lam)
    expected_advantages, expected_returns = reference_gae(values, rewards, lengths, gamma, lam)
    assert torch.allclose(advantages, expected_advantages, rtol=0, atol=1e-12)
    assert torch.allclose(returns, expected_returns, rtol=0, atol=1e-12)
    assert torch.all(advantages[mask == 0] == 0) and torch.all(returns[mask == 0] == 0)
    assert torch.allclose((returns - advantages)[mask == 1], values[mask == 1])
    # padded values and rewards never matter (in particular no value is bootstrapped from padding)
    scrambled = gae_advantages(
        scramble_padding(values, mask), scramble_padding(rewards, mask, seed=5), mask, gamma, lam
    )
    assert torch.equal(scrambled[0], advantages) and torch.equal(scrambled[1], returns)


def test_gae_closed_forms():
    values = torch.tensor([[0.5, 1.0, -1.0, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=DTYPE)
    rewards = torch.tensor([[0.0, -0.1, 3.0, 0.0], [1.5, 0.0, 0.0, 0.0]], dtype=DTYPE)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # gamma = lam = 1: the advantage is the Monte Carlo return minus the value
    advantages, returns = gae_advantages(values, rewards, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages[0, :3], torch.tensor([2.9 - 0.5, 2.9 - 1.0, 3.0 + 1.0], dtype=DTYPE))
    assert torch.allclose(returns[0, :3], torch.tensor([2.9, 2.9, 3.0], dtype=DTYPE))
    # a length-1 row: advantage = reward - value, return = reward (bootstrap after the answer is 0)
    for gamma, lam in [(1.0, 0.95), (0.5, 0.5)]:
        advantages, returns = gae_advantages(values, rewards, mask, gamma, lam)
        assert advantages[1].tolist() == [1.5 - 2.0, 0.0, 0.0, 0.0]
        assert returns[1].tolist() == [1.5, 0.0, 0.0, 0.0]
    # lam = 0: one-step TD error
    advantages, _ = gae_advantages(values, rewards, mask, gamma=0.9, lam=0.0)
    expected = [0.0 + 0.9 * 1.0 - 0.5, -0.1 + 0.9 * -1.0 - 1.0, 3.0 + 0.0 + 1.0, 0.0]
    assert torch.allclose(advantages[0], torch.tensor(expected, dtype=DTYPE))


def test_gae_bad_arguments():
    values, rewards, mask = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    for gamma, lam in [(1.1, 0.95), (-0.1, 0.95), (1.0, 1.5), (1.0, -0.01)]:
        with pytest.raises(ValueError, match="must be in"):
            gae_advantages(values, rewards, mask, gamma, lam)
    with pytest.raises(ValueError, match="Shape mismatch"):
        gae_advantages(values, rewards, torch.ones(2, 4), 1.0, 0.95)
    with pytest.raises(ValueError, match="right-padded"):
        gae_advantages(values, rewards, torch.tensor([[1, 0, 1], [1, 1, 1]]), 1.0, 0.95)


# ----------------------------------------------------------------------------------------------------------------
# policy_loss
# ----------------------------------------------------------------------------------------------------------------


def reference_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range):
    losses, clipped_chosen, approx_kls, ratios = [], [], [], []
    for row in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[row, t]:
                continue
            log_ratio = logprobs[row, t].item() - old_logprobs[row, t].item()
            ratio = math.exp(log_ratio)
            advantage = advantages[row, t].item()
            unclipped = -advantage * ratio
            clipped = -advantage * min(max(ratio, 1 - clip_range), 1 + clip_range)
            losses.append(max(unclipped, clipped))
            clipped_chosen.append(1.0 if clipped > unclipped else 0.0)
            approx_kls.append(0.5 * log_ratio**2)
            ratios.append(ratio)
    count = len(losses)
    stats = {
        "clip_fraction": sum(clipped_chosen) / count,
        "approx_kl": sum(approx_kls) / count,
        "ratio_mean": sum(ratios) / count,
        "ratio_max": max(ratios),
    }
    return sum(losses) / count, stats


@pytest.mark.parametrize("clip_range", [0.2, 0.05, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_policy_loss_vs_reference(clip_range, seed):
    _, _, mask, randn = random_batch(seed)
    old_logprobs = randn(*mask.shape) - 2
    logprobs = old_logprobs + randn(*mask.shape, scale=0.3)  # ratios spread around 1, many outside the clip range
    advantages = randn(*mask.shape)
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)
    expected_loss, expected_stats = reference_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert set(stats) == {"clip_fraction", "approx_kl", "ratio_mean", "ratio_max"}
    for name, value in stats.items():
        assert value.dim() == 0 and not value.requires_grad
        assert value.item() == pytest.approx(expected_stats[name], rel=1e-12), name


def test_policy_loss_padding_never_matters():
    _, _, mask, randn = random_batch(11)
    old_logprobs, advantages = randn(*mask.shape) - 2, randn(*mask.shape)
    logprobs = (old_logprobs + randn(*mask.shape, scale=0.3)).requires_grad_()
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    loss.backward()
    scrambled_logprobs = scramble_padding(logprobs.detach(), mask).requires_grad_()
    scrambled_loss, scrambled_stats = policy_loss(
        scrambled_logprobs, scramble_padding(old_logprobs, mask, 1), scramble_padding(advantages, mask, 2), mask, 0.2
    )
    scrambled_loss.backward()
    assert scrambled_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for name in stats:
        assert scrambled_stats[name].item() == pytest.approx(stats[name].item(), rel=1e-12), name
    assert torch.allclose(scrambled_logprobs.grad, logprobs.grad)
    assert torch.all(logprobs.grad[mask == 0] == 0)


def test_policy_loss_gradient_direction():
    """A gradient step on the loss raises the log-prob of tokens with positive advantage, lowers the others."""
    old_logprobs = torch.full((2, 3), -1.0, dtype=DTYPE)
    logprobs = old_logprobs.clone().requires_grad_()
    advantages = torch.tensor([[1.0, 2.0, -1.0], [-0.5, 0.0, 3.0]], dtype=DTYPE)
    mask = torch.ones(2, 3)
    loss, _ = policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    # at ratio 1 (the first update of a rollout) the loss is -mean(A) and its gradient -A / n
    assert loss.item() == pytest.approx(-advantages.mean().item())
    loss.backward()
    assert torch.allclose(logprobs.grad, -advantages / 6)
    with torch.no_grad():
        stepped = logprobs - 0.1 * logprobs.grad
    assert torch.all((stepped > old_logprobs)[advantages > 0])
    assert torch.all((stepped < old_logprobs)[advantages < 0])
    assert torch.all((stepped == old_logprobs)[advantages == 0])


def test_policy_loss_hand_made_clipping():
    """clip 0.2; clipped term chosen only when the ratio has left the range in the advantage's direction."""
    ratios = torch.tensor([[1.0, 1.1, 1.3, 0.7, 1.3, 0.7, 1.25, 5.0]], dtype=DTYPE)
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 2.0, 1.0]], dtype=DTYPE)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])  # the last (padded) ratio 5.0 must be ignored everywhere
    old_logprobs = torch.full_like(ratios, -2.0)
    logprobs = (old_logprobs + ratios.log()).requires_grad_()
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # per token: max(-A r, -A clip(r)):
    #   r=1.0 A=+1 -> -1.0      r=1.1 A=+1 -> -1.1      r=1.3 A=+1 -> -1.2 (clipped)   r=0.7 A=+1 -> -0.7
    #   r=1.3 A=-1 -> 1.3       r=0.7 A=-1 -> 0.8 (clipped)                            r=1.25 A=+2 -> -2.4 (clipped)
    per_token = [-1.0, -1.1, -1.2, -0.7, 1.3, 0.8, -2.4]
    assert loss.item() == pytest.approx(sum(per_token) / 7, rel=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(3 / 7)
    assert stats["ratio_max"].item() == pytest.approx(1.3)
    assert stats["ratio_mean"].item() == pytest.approx(sum([1.0, 1.1, 1.3, 0.7, 1.3, 0.7, 1.25]) / 7)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in [1.0, 1.1, 1.3, 0.7, 1.3, 0.7, 1.25]) / 7
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-12)
    loss.backward()
    gradient = logprobs.grad[0]
    # the ratio left the range in the direction the advantage pushes it: no gradient
    assert gradient[2].item() == 0.0 and gradient[5].item() == 0.0 and gradient[6].item() == 0.0
    # outside the range in the other direction the unclipped (pessimistic) term keeps its gradient -A r / n
    assert gradient[3].item() == pytest.approx(-1.0 * 0.7 / 7)
    assert gradient[4].item() == pytest.approx(1.0 * 1.3 / 7)
    # inside the range: plain policy gradient -A r / n
    assert gradient[0].item() == pytest.approx(-1.0 / 7) and gradient[1].item() == pytest.approx(-1.1 / 7)
    assert gradient[7].item() == 0.0  # padding


def test_policy_loss_bad_arguments():
    zeros = torch.zeros(2, 3)
    for clip_range in (0.0, -0.2):
        with pytest.raises(ValueError, match="clip_range"):
            policy_loss(zeros, zeros, zeros, torch.ones(2, 3), clip_range)
    with pytest.raises(ValueError, match="Shape mismatch"):
        policy_loss(zeros, zeros, zeros, torch.ones(2, 4), 0.2)
    with pytest.raises(ValueError, match="Shape mismatch"):
        policy_loss(zeros, torch.zeros(3, 3), zeros, torch.ones(2, 3), 0.2)


# ----------------------------------------------------------------------------------------------------------------
# value_loss
# ----------------------------------------------------------------------------------------------------------------


def reference_value_loss(values, old_values, returns, mask, clip_range):
    losses, clipped_chosen = [], []
    for row in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[row, t]:
                continue
            value, old_value, target = values[row, t].item(), old_values[row, t].item(), returns[row, t].item()
            clipped_value = min(max(value, old_value - clip_range), old_value + clip_range)
            unclipped_error = (value - target) ** 2
            clipped_error = (clipped_value - target) ** 2
            losses.append(max(unclipped_error, clipped_error))
            clipped_chosen.append(1.0 if clipped_error > unclipped_error else 0.0)
    return 0.5 * sum(losses) / len(losses), sum(clipped_chosen) / len(clipped_chosen)


@pytest.mark.parametrize("clip_range", [0.2, 0.05, 2.0])
@pytest.mark.parametrize("seed", range(3))
def test_value_loss_vs_reference(clip_range, seed):
    _, _, mask, randn = random_batch(seed)
    old_values, returns = randn(*mask.shape), randn(*mask.shape)
    values = (old_values + randn(*mask.shape, scale=0.4)).requires_grad_()
    loss, stats = value_loss(values, old_values, returns, mask, clip_range)
    expected_loss, expected_clip_fraction = reference_value_loss(values, old_values, returns, mask, clip_range)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert set(stats) == {"clip_fraction"} and not stats["clip_fraction"].requires_grad
    assert stats["clip_fraction"].item() == pytest.approx(expected_clip_fraction, rel=1e-12)
    loss.backward()
    scrambled_values = scramble_padding(values.detach(), mask).requires_grad_()
    scrambled_loss, scrambled_stats = value_loss(
        scrambled_values, scramble_padding(old_values, mask, 1), scramble_padding(returns, mask, 2), mask, clip_range
    )
    scrambled_loss.backward()
    assert scrambled_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    assert scrambled_stats["clip_fraction"].item() == stats["clip_fraction"].item()
    assert torch.allclose(scrambled_values.grad, values.grad) and torch.all(values.grad[mask == 0] == 0)


def test_value_loss_hand_made_clipping():
    old_values = torch.zeros(1, 4, dtype=DTYPE)
    values = torch.tensor([[0.5, 0.1, -0.5, 9.0]], dtype=DTYPE, requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=DTYPE)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # v=0.5, R=1: unclipped 0.25, clipped (0.2-1)^2 = 0.64 -> clipped chosen (no gradient)
    # v=0.1, R=0: inside the range, both 0.01
    # v=-0.5, R=0: unclipped 0.25, clipped (-0.2)^2 = 0.04 -> unclipped chosen
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01 + 0.25) / 3, rel=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.5 * 2 * 0.1 / 3, 0.5 * 2 * -0.5 / 3, 0.0])


def test_value_loss_bad_arguments():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip_range"):
        value_loss(zeros, zeros, zeros, torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match="Shape mismatch"):
        value_loss(zeros, zeros, torch.zeros(2, 4), torch.ones(2, 3), 0.2)


# ----------------------------------------------------------------------------------------------------------------
# ema_update
# ----------------------------------------------------------------------------------------------------------------


def test_ema_closed_form_three_updates():
    beta = 0.9
    e0, p1, p2, p3 = 2.0, -1.0, 4.0, 0.5
    ema = [torch.tensor([e0, 10 * e0], dtype=DTYPE)]
    ema_storage = ema[0].data_ptr()
    for p in (p1, p2, p3):
        ema_update(ema, [torch.tensor([p, 10 * p], dtype=DTYPE)], beta)
    expected = beta**3 * e0 + beta**2 * (1 - beta) * p1 + beta * (1 - beta) * p2 + (1 - beta) * p3
    assert ema[0].tolist() == pytest.approx([expected, 10 * expected], rel=1e-12)
    assert ema[0].data_ptr() == ema_storage  # updated in place


def test_ema_on_modules_vs_reference_loop():
    torch.manual_seed(0)
    model, ema_model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ema_model.double()  # the EMA copy may be kept in another dtype
    beta = 0.992
    expected = [list(map(float, p.detach().flatten().tolist())) for p in ema_model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        ema_update(ema_model.parameters(), model.parameters(), beta)
        for index, parameter in enumerate(model.parameters()):
            current = parameter.detach().flatten().tolist()
            expected[index] = [beta * e + (1 - beta) * p for e, p in zip(expected[index], current, strict=True)]
    for index, ema_parameter in enumerate(ema_model.parameters()):
        assert ema_parameter.dtype == torch.float64 and ema_parameter.grad is None
        assert ema_parameter.flatten().tolist() == pytest.approx(expected[index], rel=1e-10)


def test_ema_extremes_and_bad_arguments():
    ema, parameter = [torch.tensor([1.0, 2.0])], [torch.tensor([5.0, -5.0])]
    ema_update(ema, parameter, beta=1.0)
    assert ema[0].tolist() == [1.0, 2.0]
    ema_update(ema, parameter, beta=0.0)
    assert ema[0].tolist() == [5.0, -5.0]
    with pytest.raises(ValueError, match="beta"):
        ema_update(ema, parameter, beta=1.5)
    with pytest.raises(ValueError):  # different numbers of tensors
        ema_update([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)], beta=0.9)
    with pytest.raises(ValueError, match="shape"):
        ema_update([torch.zeros(2)], [torch.zeros(3)], beta=0.9)
