"""A stop signal that arrives while the ranks are agreeing on the previous poll is kept for the next one.

Found by tests/e2e/test_signals.py failing once in CI (a SIGUSR1 that never stopped the run): the handler used to
write the agreed flag, and the poll that was in its all-reduce then stored the old agreement over it."""

import os
import signal
from types import SimpleNamespace

import torch.distributed as dist

from bigtrain.generate.inference import ensure_single_process_parallel
from bigtrain.train.trainer import Trainer


def test_signal_during_the_all_reduce_is_not_lost(monkeypatch):
    ensure_single_process_parallel()  # a gloo world of one
    trainer = Trainer.__new__(Trainer)  # only the stop machinery: no engine
    trainer.info, trainer.stop_file = SimpleNamespace(rank=0, device="cpu"), None
    trainer.stop_signal = trainer._requested = 0
    previous = signal.getsignal(signal.SIGUSR1)
    real = dist.all_reduce
    sent = []

    def all_reduce_then_signal(tensor, *args, **kwargs):
        out = real(tensor, *args, **kwargs)
        if not sent:  # the signal lands once, after this rank's value went into the reduction
            sent.append(os.kill(os.getpid(), signal.SIGUSR1))
        return out

    try:
        trainer._install_signal_handlers()
        monkeypatch.setattr(dist, "all_reduce", all_reduce_then_signal)
        assert trainer._stop_requested() is False  # this poll agreed before the signal
        assert trainer._stop_requested() is True and trainer.stop_signal == signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, previous)
