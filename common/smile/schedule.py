"""Epoch plan of a self-relabeling run (SMILEr): round 0 trains SMILE, rounds 1..T retrain on pseudo-labels."""

from __future__ import annotations

import math

__all__ = ["RelabelingSchedule"]


class RelabelingSchedule:
    """Which round each epoch belongs to, and a learning rate that restarts its cosine decay every round.

    Round 0 trains for ``initial_epochs`` (0 when training starts from given weights, e.g. a trained SMILE
    model). Each round t = 1..T starts by relabeling with the current model, then trains ``round_epochs``
    epochs on the real labels plus round t's pseudo-labels. Epochs count from 1, as in ignite.

    Called with the number of completed epochs, as ``torch.optim.lr_scheduler.LambdaLR`` calls its
    ``lr_lambda``, it returns the learning-rate factor: a cosine from 1 towards 0 over each round, so every
    round starts again at the full learning rate (a warm restart). Its state is three integers, so LambdaLR's
    ``state_dict`` saves and restores it.

    Args:
        num_rounds: T >= 1, the number of relabeling rounds.
        round_epochs: epochs of training in each round t >= 1.
        initial_epochs: epochs of round 0 (SMILE training), >= 0.

    Example: ``RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)`` trains epochs 1..30 in
    round 0, relabels after epoch 30, trains 31..40 in round 1, relabels after epoch 40, trains 41..50.
    """

    def __init__(self, num_rounds: int, round_epochs: int, initial_epochs: int = 0) -> None:
        if int(num_rounds) < 1:
            raise ValueError(f"num_rounds (T) must be >= 1, got {num_rounds}")
        if int(round_epochs) < 1:
            raise ValueError(f"round_epochs must be >= 1, got {round_epochs}")
        if int(initial_epochs) < 0:
            raise ValueError(f"initial_epochs must be >= 0, got {initial_epochs}")
        self.num_rounds = int(num_rounds)
        self.round_epochs = int(round_epochs)
        self.initial_epochs = int(initial_epochs)

    @property
    def total_epochs(self) -> int:
        """The trainer's ``max_epochs``: initial_epochs + T * round_epochs."""
        return self.initial_epochs + self.num_rounds * self.round_epochs

    @property
    def rounds(self) -> range:
        """The rounds that train at least one epoch: 0..T, or 1..T when round 0 has no epoch."""
        return range(0 if self.initial_epochs > 0 else 1, self.num_rounds + 1)

    def _check_round(self, round_index: int) -> None:
        if not 0 <= round_index <= self.num_rounds:
            raise ValueError(f"round must be in 0..{self.num_rounds}, got {round_index}")

    def round_start(self, round_index: int) -> int:
        """Completed epochs when round ``round_index`` starts (for t >= 1: when its relabeling runs)."""
        self._check_round(round_index)
        return 0 if round_index == 0 else self.initial_epochs + (round_index - 1) * self.round_epochs

    def round_end(self, round_index: int) -> int:
        """Completed epochs when round ``round_index`` has finished training."""
        self._check_round(round_index)
        return self.initial_epochs + round_index * self.round_epochs

    def round_of_epoch(self, epoch: int) -> int:
        """The round that trains epoch ``epoch`` (counted from 1); epochs past the end belong to round T."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        if epoch <= self.initial_epochs:
            return 0
        return min(1 + (epoch - self.initial_epochs - 1) // self.round_epochs, self.num_rounds)

    def ending_round(self, completed_epochs: int) -> int | None:
        """The round whose training ends when ``completed_epochs`` epochs are done, else None."""
        return next((r for r in self.rounds if self.round_end(r) == completed_epochs), None)

    def starting_round(self, completed_epochs: int) -> int | None:
        """The relabeling round t >= 1 that starts when ``completed_epochs`` epochs are done, else None."""
        return next((t for t in range(1, self.num_rounds + 1) if self.round_start(t) == completed_epochs), None)

    def __call__(self, completed_epochs: int) -> float:
        """Learning-rate factor for the next epoch: 0.5 * (1 + cos(pi * position in round / round length))."""
        round_index = self.round_of_epoch(completed_epochs + 1)
        length = self.initial_epochs if round_index == 0 else self.round_epochs
        position = min(completed_epochs - self.round_start(round_index), length)
        return 0.5 * (1.0 + math.cos(math.pi * position / length))
