"""Pretraining: the one training loop, for every objective.

    loop.py    train(): setup -> build -> data -> resume -> loop -> teardown,
               and the helpers each step calls
    log.py     what the run reports: train_log.tsv, TensorBoard, read errors
    resume.py  what a resume may change (the config against the checkpoint) and what it refuses
    bench.py   ``audiossl bench``: the step, built and run by the loop's own functions, and the loader
    state.py   TrainState (weights, optimizer, schedule, counters) <-> checkpoint
    stream.py  the corpus as windows; batches in a resumable order

Under ``torchrun`` (detected through ``RANK``) every process trains one
replica (:mod:`audiossl.runtime`); rank 0 alone logs and writes. Seeds are
offset by the rank, and rank r reads batches r, r + world, ... of each epoch.

Faults the loop survives (docs/reliability.md lists them with their tests):
files the scan finds unusable are skipped and listed in
``scan_problems.tsv`` (``strict`` makes them an error before training); a
file that fails later has its windows replaced within their batch and is
logged in ``read_errors.tsv``; a step whose loss or gradient is not finite is
dropped, and ``max_nonfinite`` of them in a row stop the run without saving.

A killed run resumes from its last checkpoint with the same optimizer,
scheduler, data position and RNG states, and ``train_log.tsv`` (step, loss,
lr; one line per step, cut back to the checkpoint on resume) then reads as if
the run had never stopped.

On shared clusters: the run holds ``EXP_DIR/.lock`` (:mod:`audiossl.utils.lock`);
SIGTERM, SIGINT, SIGUSR1 and the time budget stop it after the current step
with a checkpoint (:mod:`audiossl.utils.stopping`, which also lists the exit
codes); what a resume may change and what it refuses is :mod:`audiossl.train.resume`;
a corpus none of whose files can be opened is refused before training, and
``MAX_UNREADABLE_BATCHES`` batches in a row without a readable window stop it.
"""

from audiossl.runtime import TrainingError
from audiossl.train.log import TRAIN_LOG
from audiossl.train.loop import train
from audiossl.train.state import CHECKPOINT, Pretrainer, initial_checkpoint
from audiossl.train.stream import MAX_UNREADABLE_BATCHES, BatchStream

__all__ = ["BatchStream", "CHECKPOINT", "MAX_UNREADABLE_BATCHES", "Pretrainer", "TRAIN_LOG", "TrainingError",
           "initial_checkpoint", "train"]
