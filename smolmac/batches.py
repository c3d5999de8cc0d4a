"""Batches: resumable streams of micro-batches for the training loop. `Batches` buckets rows of
similar length (few padded shapes, so compiled graphs are reused) and can pack short rows into
one sequence; `PackedBatches` cuts a pretraining token stream into fixed-length sequences.

Every stream has `stream(start_micro, shard)` yielding `(arrays, n_real_tokens)` forever, from
the same position on every run (resume skips k micro-batches without touching the data), `once()`
for evaluation, and `len()` = micro-batches per epoch. With `shard=(rank, size)` (data parallel,
smolmac/distributed.py) process `rank` gets its contiguous slice of the rows of each micro-batch
of the same sequence; a process whose slice is empty (a short last micro-batch) gets one row to
run with n_real_tokens = 0, which the loop weights by 0. `fingerprint()` hashes the tokenised data
(processes of a group compare it).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from smolmac.data import Example
from smolmac.distributed import shard_bounds
from smolmac.errors import UserError


def pad_to(n: int, cap: int | None = None) -> int:
    """Round a length up to one of a few shapes (multiples of 32 up to 256, of 64 up to 1024,
    then of 128) so compiled graphs are reused while padding stays small."""
    step = 32 if n <= 256 else 64 if n <= 1024 else 128
    size = -(-n // step) * step
    return min(size, cap) if cap else size


def truncate(examples: list[Example], max_len: int) -> tuple[list[Example], int]:
    """Cut rows to max_len + 1 tokens (inputs and targets are shifted by one); counts cuts."""
    cut = 0
    out = []
    for ex in examples:
        if len(ex.tokens) > max_len + 1:
            cut += 1
            ex = Example(ex.tokens[: max_len + 1], ex.mask[: max_len + 1])
        out.append(ex)
    return out, cut


def pack(examples: list[Example], max_len: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Greedy first-fit packing into sequences of at most max_len + 1 tokens.

    Returns (tokens, mask, segment) triples; `segment` numbers the rows inside a sequence so the
    attention mask can keep rows from seeing each other.
    """
    order = np.random.default_rng(seed).permutation(len(examples))
    bins: list[list[Example]] = []
    sizes: list[int] = []
    for i in sorted(order, key=lambda i: -len(examples[i].tokens)):
        ex = examples[i]
        for b, size in enumerate(sizes):
            if size + len(ex.tokens) <= max_len + 1:
                bins[b].append(ex)
                sizes[b] += len(ex.tokens)
                break
        else:
            bins.append([ex])
            sizes.append(len(ex.tokens))
    packed = []
    for b in bins:
        tokens = np.concatenate([e.tokens for e in b])
        mask = np.concatenate([e.mask & (np.arange(len(e.tokens)) > 0) for e in b])  # first token of a row is never a target across rows
        segment = np.concatenate([np.full(len(e.tokens), j + 1, np.int32) for j, e in enumerate(b)])
        packed.append((tokens, mask, segment))
    return packed


class Batches:
    """Length-bucketed, resumable micro-batches for SFT/LM rows.

    Rows are sorted by length and cut into batches of similar length (so padding is small);
    the order of batches is shuffled per epoch with a seed, so position k of the stream is the
    same on every run: resume skips k micro-batches without touching the data.

    Each micro-batch is (inputs (B, L) int32, targets (B, L) int32, loss mask (B, L) float32[, segments (B, L) int32]).
    """

    def __init__(self, examples: list[Example], batch_size: int, max_len: int, seed: int, packing: bool = False, pad_id: int = 0):
        if not examples:
            raise UserError("data: no training rows are left after tokenisation.")
        self.batch_size, self.max_len, self.seed, self.pad_id = batch_size, max_len, seed, pad_id
        self.examples, self.truncated = truncate(examples, max_len)
        # rows whose kept tokens are all prompt (the first token is never a target)
        self.untrained = sum(1 for e in self.examples if not e.mask[1:].any())
        self.packing = packing
        if packing:
            items = pack(self.examples, max_len, seed)
        else:
            items = [(e.tokens, e.mask, None) for e in self.examples]
        self.items = items
        self.sequences = len(items)  # rows, or packed sequences, per epoch
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.longest = pad_to(max(len(t) - 1 for t, _, _ in items), cap=max_len)  # widest batch

    def __len__(self):
        return len(self.groups)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))

    def make(self, group: list[int]):
        rows = [self.items[i] for i in group]
        longest = max(len(t) for t, _, _ in rows) - 1
        width = pad_to(longest, cap=self.max_len)
        b = len(rows)
        inputs = np.full((b, width), self.pad_id, np.int32)
        targets = np.full((b, width), self.pad_id, np.int32)
        mask = np.zeros((b, width), np.float32)
        segments = np.zeros((b, width), np.int32) if self.packing else None
        tokens = 0
        for j, (t, m, s) in enumerate(rows):
            n = len(t) - 1
            inputs[j, :n] = t[:-1]
            targets[j, :n] = t[1:]
            mask[j, :n] = m[1:]
            tokens += n  # real (non-pad) tokens processed, as mlx-lm counts them
            if segments is not None:
                segments[j, :n] = s[:-1]
        arrays = (inputs, targets, mask) if segments is None else (inputs, targets, mask, segments)
        return arrays, tokens

    def make_shard(self, group: list[int], shard: tuple[int, int]):
        """Process `shard[0]` of `shard[1]`'s rows of a micro-batch (see the module docstring)."""
        lo, hi = shard_bounds(len(group), *shard)
        if lo == hi:
            return self.make(group[:1])[0], 0
        return self.make(group[lo:hi])

    def stream(self, start: int = 0, shard: tuple[int, int] = (0, 1)):
        """Yield (arrays, n_real_non_pad_tokens) forever, from micro-batch number `start`
        (counted in whole micro-batches of the group, whatever its size)."""
        per_epoch = len(self.groups)
        k = start
        while True:
            epoch, pos = divmod(k, per_epoch)
            order = self.epoch_order(epoch)
            for i in order[pos:]:
                yield self.make_shard(self.groups[i], shard)
                k += 1

    def fingerprint(self) -> str:
        h = hashlib.blake2b(repr((len(self.groups), self.batch_size, self.max_len)).encode(), digest_size=16)
        for t, m, _ in self.items:
            h.update(np.ascontiguousarray(t).tobytes())
            h.update(np.ascontiguousarray(m).tobytes())
        return h.hexdigest()

    def once(self):
        """Every batch once, in length order (evaluation)."""
        for g in self.groups:
            yield self.make(g)


class PackedBatches:
    """Fixed-length sequences cut from a token stream, batched; same interface as data.Batches.

    Sequence i is tokens[i*T : i*T + T + 1] (T = max_seq_len), so every token is a target once.
    The order of sequences is a seeded permutation per epoch: micro-batch k of the stream is the
    same on every run, which makes resume exact without storing the order.
    Micro-batches are (inputs (B, T) int32, targets (B, T) int32, mask (B, T) float32).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.n_seq = (len(tokens) - 1) // seq_len
        self.sequences, self.untrained = self.n_seq, 0
        self.per_epoch = max(self.n_seq // batch_size, 1) if self.n_seq else 0
        self.truncated = 0
        self.real_tokens = self.n_seq * seq_len
        self.yields: list[tuple[float, int]] = []  # (time, tokens) of recent micro-batches (MFU)

    def __len__(self):
        return self.per_epoch

    def make(self, idx) -> tuple[tuple, int]:
        T = self.seq_len
        seqs = np.stack([np.asarray(self.tokens[i * T : i * T + T + 1], dtype=np.int32) for i in idx])
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        return (inputs, targets, np.ones(inputs.shape, np.float32)), inputs.size

    def stream(self, start: int = 0, shard: tuple[int, int] = (0, 1)):
        """Yield (arrays, n_tokens) forever, from micro-batch number `start`; with `shard`,
        this process's rows of each micro-batch (see the module docstring)."""
        B, k = min(self.batch_size, self.n_seq), start
        while True:
            epoch, pos = divmod(k, self.per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_seq)
            for j in range(pos, self.per_epoch):
                idx = order[j * B : (j + 1) * B]
                lo, hi = shard_bounds(len(idx), *shard)
                batch = self.make(idx[lo:hi]) if hi > lo else (self.make(idx[:1])[0], 0)
                self.yields = self.yields[-255:] + [(time.perf_counter(), batch[1])]
                yield batch
                k += 1

    def fingerprint(self) -> str:
        h = hashlib.blake2b(repr((self.n_seq, self.seq_len, self.batch_size)).encode(), digest_size=16)
        h.update(np.ascontiguousarray(self.tokens).tobytes())
        return h.hexdigest()

    def once(self):
        """Every sequence once, in order (evaluation)."""
        for j in range(0, self.n_seq, self.batch_size):
            yield self.make(range(j, min(j + self.batch_size, self.n_seq)))


def pace(batches: PackedBatches, since: float) -> float | None:
    """Training tokens/s from the stream's own clock: the gaps between consecutive micro-batches,
    skipping the first of the process (compilation) and any gap that contains an evaluation."""
    ys = batches.yields
    gaps = [(b[0] - a[0], a[1]) for a, b in zip(ys, ys[1:]) if a[0] >= since]
    if len(gaps) > 1:
        gaps = gaps[1:] if ys[0][0] < since + 1e-9 else gaps
        gaps = sorted(gaps)[: max(1, int(len(gaps) * 0.9))]  # the slowest tenth held evals/events
        return sum(t for _, t in gaps) / max(sum(d for d, _ in gaps), 1e-9)
    return None
