"""The loss-spike warning names the samples of the spiking step (SpikeDetection over Trainer.step_sample_ids)."""

from types import SimpleNamespace

from bigtrain.train.callbacks import SpikeDetection
from bigtrain.train.trainer import Trainer


class _Loader:
    def sample_id(self, index):
        return f"shard-7.tar:{index * 3}"  # not the index itself: the warning must ask the loader


def _trainer(gbs):
    # The real Trainer.step_sample_ids on a stand-in holding only what it reads.
    t = SimpleNamespace(job=SimpleNamespace(train=SimpleNamespace(global_batch_size=gbs)), loader=_Loader(), step=0)
    t.step_sample_ids = lambda step: Trainer.step_sample_ids(t, step)
    return t


def _feed(cb, trainer, rows):
    for loss, skipped in rows:
        trainer.step += 1
        cb.on_step_end(trainer, {"loss": loss, "skipped": skipped})


def test_spike_warning_names_the_steps_samples(capsys):
    cb, t = SpikeDetection(3.0), _trainer(gbs=4)
    # Step 11's 50.0 has only 9 finite steps before it (the skipped NaN step is not one): no mean yet, no warning.
    _feed(cb, t, [(1.0, False)] * 9 + [(float("nan"), True), (50.0, False)])
    assert capsys.readouterr().out == ""
    # Step 12: the mean of the 10 finite losses (a NaN among them would make it NaN and silence every warning).
    _feed(cb, t, [(20.0, False)])
    assert capsys.readouterr().out == (
        "warning: loss spike at step 12: 20.0000 > 3.0 × running mean 5.9000; "
        "samples: shard-7.tar:132, shard-7.tar:135, shard-7.tar:138, shard-7.tar:141\n")
    _feed(cb, t, [(17.0, False)])  # not above 3 × (79 / 11) = 21.5
    assert capsys.readouterr().out == ""


def test_more_than_16_ids_are_cut(capsys):
    cb, t = SpikeDetection(2.0), _trainer(gbs=20)
    _feed(cb, t, [(1.0, False)] * 10 + [(5.0, False)])
    ids = ", ".join(f"shard-7.tar:{i * 3}" for i in range(200, 216))
    assert capsys.readouterr().out == (f"warning: loss spike at step 11: 5.0000 > 2.0 × running mean 1.0000; "
                                       f"samples: {ids}, … (20 in all)\n")


def test_factor_zero_disables(capsys):
    cb, t = SpikeDetection(0.0), _trainer(gbs=2)
    _feed(cb, t, [(1.0, False)] * 10 + [(1e6, False)])
    assert capsys.readouterr().out == ""
