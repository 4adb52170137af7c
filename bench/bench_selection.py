"""Benchmark: MIRACL's epoch-end selection + correction, vectorised vs. straightforward per-pair Python.

Pipeline timed (METHOD §3–§5), on synthetic statistics of N instances × L labels with
E epochs of correctness history (defaults 60,000 × 25 × 30, the MIMIC-IV PHE scale):

  close_epoch (append correctness bits) → difficulty (Eq. 1, durations) → Z̃ (Eq. 2)
  → 2L batched GMMs + partition (Eq. 3) → co-occurrence C, Z⁻, corrected labels (Eqs. 4–8)

The per-pair Python reference implements the same rules with Python loops over pairs,
instances and groups (lists of correctness per pair, sorted() ranks, dicts of groups),
and fits the 2L GMMs one after another with scikit-learn's GaussianMixture. Its pure
Python stages are timed on a random subsample of instances and extrapolated LINEARLY to N
(they are O(N)); the 2L sequential scikit-learn fits are timed on the full data. Both
facts are printed with the numbers. The Python version on the subsample is also checked
against the vectorised one (same Z̃; same corrected labels given the same GMM means).

Usage: python bench/bench_selection.py [--instances 60000] [--labels 25] [--epochs 30]
       [--subsample 1000] [--device cpu|cuda] [--threads N] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from miracl_grid.trainables.correction import cooccurrence_matrix, correct_labels
from miracl_grid.trainables.gmm import fit_group_mixtures
from miracl_grid.trainables.selection import selection_metric
from miracl_grid.trainables.statistics import PairStatistics


# --- synthetic epoch statistics --------------------------------------------------------------
def synthetic_statistics(instances, labels, epochs, seed, device):
    """Clean labels (prevalence 0.03–0.34, L_avg ≈ 4.6), 20 % symmetric noise, and per-epoch
    probabilities of a model that slowly memorises: clean pairs are learned early, flipped pairs late."""
    generator = torch.Generator().manual_seed(seed)
    prevalence = torch.linspace(0.03, 0.336, labels)
    clean = (torch.rand(instances, labels, generator=generator) < prevalence).float()
    flips = torch.rand(instances, labels, generator=generator) < 0.2
    observed = torch.where(flips, 1 - clean, clean)
    evidence = 2.0 * (2 * clean - 1) + torch.randn(instances, labels, generator=generator)
    stats = PairStatistics(instances, labels, device=device)
    positions = torch.arange(instances)
    probabilities = None
    for epoch in range(1, epochs + 1):
        memorise = min(epoch / epochs, 1.0) * 3.0 * (2 * observed - 1)   # pull towards the observed label
        logits = evidence * (1 - 0.5 * epoch / epochs) + memorise * flips.float() * 0.8 + \
            0.8 * torch.randn(instances, labels, generator=generator)
        probabilities = torch.sigmoid(logits)
        for start in range(0, instances, 8192):
            batch = positions[start:start + 8192]
            stats.record_batch(batch.to(device), probabilities[batch].to(device), observed[batch].to(device))
        if epoch < epochs:
            stats.close_epoch()
    return stats, observed.to(device), clean, flips


def synchronise(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --- vectorised pipeline ---------------------------------------------------------------------------
def vectorised_pipeline(stats, observed, alpha=0.5, tau=0.02, seed=30, device="cpu"):
    timings = {}

    def stage(name, function):
        synchronise(device)
        start = time.perf_counter()
        result = function()
        synchronise(device)
        timings[name] = time.perf_counter() - start
        return result

    stage("close_epoch", stats.close_epoch)
    difficulty = stage("difficulty", lambda: stats.difficulty("durations"))
    selection = stage("selection_metric", lambda: selection_metric(stats.probabilities, observed, difficulty, alpha))
    mixtures = stage("gmm", lambda: fit_group_mixtures(selection.z_tilde, selection.group_id,
                                                       2 * observed.shape[1], seed=seed))

    def correct():
        mean_clean, mean_noisy = mixtures.pair_means(selection.group_id)
        return correct_labels(observed=observed, probabilities=stats.probabilities, z_tilde=selection.z_tilde,
                              partition=mixtures.partition, mean_clean=mean_clean, mean_noisy=mean_noisy,
                              tau=tau, cooccurrence=cooccurrence_matrix(observed))

    result = stage("correction", correct)
    timings["total"] = sum(timings.values())
    return timings, selection, mixtures, result


# --- per-pair Python reference --------------------------------------------------------------------
def python_pipeline(histories, probabilities, observed, alpha, tau, mixture_means=None, fit=True):
    """Same rules with plain Python loops. histories: per pair list of 0/1 (epochs so far)
    plus the current epoch's bit appended here; probabilities/observed: nested lists."""
    timings = {}
    instances, labels = len(probabilities), len(probabilities[0])

    start = time.perf_counter()
    for i in range(instances):
        for l in range(labels):
            histories[i][l].append(1 if (probabilities[i][l] > 0.5) == (observed[i][l] == 1) else 0)
    timings["close_epoch"] = time.perf_counter() - start

    start = time.perf_counter()
    difficulty = [[0.0] * labels for _ in range(instances)]
    for i in range(instances):
        for l in range(labels):
            runs_correct = runs_incorrect = epochs_correct = epochs_incorrect = 0
            previous = None
            for bit in histories[i][l]:
                if bit:
                    epochs_correct += 1
                    runs_correct += bit != previous
                else:
                    epochs_incorrect += 1
                    runs_incorrect += bit != previous
                previous = bit
            mean_incorrect = epochs_incorrect / runs_incorrect if runs_incorrect else 0.0
            mean_correct = epochs_correct / runs_correct if runs_correct else 0.0
            difficulty[i][l] = mean_incorrect - mean_correct
    timings["difficulty"] = time.perf_counter() - start

    start = time.perf_counter()
    oriented = [[0] * labels for _ in range(instances)]
    for i in range(instances):
        order = sorted(range(labels), key=lambda l: (-probabilities[i][l], l))
        for rank, l in enumerate(order, start=1):
            oriented[i][l] = rank if observed[i][l] == 1 else labels + 1 - rank
    members = {}
    for i in range(instances):
        for l in range(labels):
            members.setdefault((l, observed[i][l]), []).append(i)

    def normalise(values, epsilon=0.0):
        out = [[0.0] * labels for _ in range(instances)]
        for (l, _), rows in members.items():
            column = [values[i][l] for i in rows]
            low, span = min(column), max(column) - min(column) + epsilon
            for i in rows:
                out[i][l] = (values[i][l] - low) / span if span > 0 else 0.0
        return out

    rank_normalised, difficulty_normalised = normalise(oriented), normalise(difficulty)
    z = [[alpha * rank_normalised[i][l] + (1 - alpha) * difficulty_normalised[i][l] for l in range(labels)]
         for i in range(instances)]
    z_tilde = normalise(z, 1e-6)
    timings["selection_metric"] = time.perf_counter() - start

    means = {}
    start = time.perf_counter()
    if fit:
        for (l, c), rows in sorted(members.items()):
            column = np.array([z_tilde[i][l] for i in rows]).reshape(-1, 1)
            if len(rows) < 10:
                continue
            model = GaussianMixture(n_components=2, random_state=0).fit(column)
            low, high = sorted(model.means_.ravel())
            if high - low >= 1e-3:
                means[(l, c)] = (low, high)
    timings["gmm"] = time.perf_counter() - start
    if mixture_means is not None:
        means = mixture_means

    start = time.perf_counter()
    counts = [[0] * labels for _ in range(labels)]
    for i in range(instances):
        positives = [l for l in range(labels) if observed[i][l] == 1]
        for k in positives:
            for j in positives:
                counts[k][j] += 1
    cooccurrence = [[0.0] * labels for _ in range(labels)]
    for k in range(labels):
        total = sum(counts[k][b] for b in range(labels) if b != k)
        for j in range(labels):
            cooccurrence[k][j] = counts[k][j] / total if (total and j != k) else 0.0
    corrected = [[0.0] * labels for _ in range(instances)]
    for i in range(instances):
        for l in range(labels):
            positive = observed[i][l] == 1
            if not positive:
                support = sum(cooccurrence[k][l] for k in range(labels) if observed[i][k] == 1)
                if support <= tau:
                    continue
            label = 1.0 if positive else 0.0
            group = (l, observed[i][l])
            if group not in means or z_tilde[i][l] <= means[group][0]:
                corrected[i][l] = label
                continue
            low, high = means[group]
            p = probabilities[i][l]
            if z_tilde[i][l] >= high:
                corrected[i][l] = p
            else:
                u = min(max((z_tilde[i][l] - low) / (high - low + 1e-6), 0.0), 1.0)
                corrected[i][l] = u * p + (1 - u) * label
    timings["correction"] = time.perf_counter() - start
    return timings, z_tilde, corrected


def sequential_sklearn_gmms(z_tilde, group_id, num_groups, min_group=10):
    """2L GaussianMixture fits one after another on the full data (what a direct port would do)."""
    values, groups = z_tilde.reshape(-1).cpu().numpy(), group_id.reshape(-1).cpu().numpy()
    start = time.perf_counter()
    for group in range(num_groups):
        column = values[groups == group]
        if len(column) >= min_group:
            GaussianMixture(n_components=2, random_state=0).fit(column.reshape(-1, 1))
    return time.perf_counter() - start


# --- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=60000)
    parser.add_argument("--labels", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--subsample", type=int, default=1000, help="instances for the per-pair Python timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = arguments.device
    n, labels, epochs = arguments.instances, arguments.labels, arguments.epochs
    print(f"N={n} L={labels} epochs={epochs} device={device} torch threads={torch.get_num_threads()} "
          f"CPUs={os.cpu_count()} load average={os.getloadavg()[0]:.1f}")

    stats, observed, _, _ = synthetic_statistics(n, labels, epochs, arguments.seed, device)
    state = stats.state_dict()
    runs = []
    for _ in range(arguments.repeats):
        stats.load_state_dict(state)  # the same open epoch every repeat
        runs.append(vectorised_pipeline(stats, observed, device=device))
    best = min(runs, key=lambda run: run[0]["total"])
    timings, selection, mixtures, correction = best
    print("\nvectorised pipeline (best of %d), seconds:" % arguments.repeats)
    for name, value in timings.items():
        print(f"  {name:18s} {value:8.3f}")
    sizes = mixtures.set_sizes()
    print(f"  sets: clean {sizes['clean']}, uncertain {sizes['uncertain']}, noisy {sizes['noisy']}; "
          f"GMM iterations max {int(mixtures.iterations.max())}, fallback groups {int(mixtures.fallback.sum())}")

    # per-pair Python on a subsample (history of the first E−1 epochs + the open epoch)
    rng = np.random.default_rng(arguments.seed)
    subset = torch.tensor(np.sort(rng.choice(n, size=min(arguments.subsample, n), replace=False)))
    stats.load_state_dict(state)
    history = stats.history.cpu()[subset]
    histories = [[[int((int(history[i, l]) >> e) & 1) for e in range(epochs - 1)] for l in range(labels)]
                 for i in range(len(subset))]
    probabilities = stats.probabilities.cpu()[subset].double().tolist()
    observed_list = observed.cpu()[subset].long().tolist()
    python_timings, python_z, python_corrected = python_pipeline(histories, probabilities, observed_list, 0.5, 0.02,
                                                                 fit=False)
    # agreement on the subsample: vectorised pipeline run on the same subsample
    sub_stats = PairStatistics(len(subset), labels)
    sub_stats.load_state_dict({**{k: v[subset] if torch.is_tensor(v) and v.dim() and v.shape[0] == n else v
                                  for k, v in state.items()}, "num_instances": len(subset)})
    sub_observed = observed.cpu()[subset]
    _, sub_selection, sub_mixtures, sub_correction = vectorised_pipeline(sub_stats, sub_observed)
    z_difference = float(np.abs(sub_selection.z_tilde.numpy() - np.array(python_z)).max())
    means = {(int(g) // 2, int(g) % 2): tuple(sub_mixtures.means[g].tolist())
             for g in range(2 * labels) if not sub_mixtures.fallback[g]}
    _, _, python_corrected = python_pipeline([[h[:-1] for h in row] for row in histories], probabilities,
                                             observed_list, 0.5, 0.02, mixture_means=means, fit=False)
    corrected_difference = float(np.abs(sub_correction.corrected.numpy() - np.array(python_corrected)).max())
    print(f"\nagreement on the {len(subset)}-instance subsample: max |ΔZ̃| = {z_difference:.2e}, "
          f"max |Δ corrected| (same GMM means) = {corrected_difference:.2e}")

    scale = n / len(subset)
    sklearn_seconds = sequential_sklearn_gmms(selection.z_tilde, selection.group_id, 2 * labels)
    python_total = 0.0
    print(f"\nper-pair Python reference, seconds (pure-Python stages timed on {len(subset)} instances "
          f"and extrapolated linearly ×{scale:.1f}; GMM = {2 * labels} sequential sklearn fits on the full data):")
    for name in ("close_epoch", "difficulty", "selection_metric", "correction"):
        value = python_timings[name] * scale
        python_total += value
        print(f"  {name:18s} {value:8.3f}   (measured {python_timings[name]:.3f} on the subsample)")
    python_total += sklearn_seconds
    print(f"  {'gmm':18s} {sklearn_seconds:8.3f}   (measured on all {n * labels} pairs)")
    print(f"  {'total':18s} {python_total:8.3f}")
    print(f"\nvectorised total {timings['total']:.3f} s vs per-pair Python {python_total:.1f} s "
          f"→ speed-up ×{python_total / timings['total']:.0f}")
    print(f"GMM alone: batched {timings['gmm']:.3f} s vs sequential sklearn {sklearn_seconds:.2f} s "
          f"→ ×{sklearn_seconds / timings['gmm']:.1f}")


if __name__ == "__main__":
    main()
