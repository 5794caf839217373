"""camri.loop, the training API camri train and the benchmark share: it trains on exactly the data it is
given (issue 13: a cached copy made the benchmark count images it never trained on)."""

import math

import pytest
import torch

from camri import data as camri_data
from camri import loop
from camri.train import Run, TrainConfig, resolve_amp


def _dataset(n_train: int, n_test: int, seed: int = 0) -> camri_data.DataSet:
    """CIFAR-10-like in miniature: 3 channels (so channels_last differs from NCHW), 8x8 pixels, 10 classes."""
    g = torch.Generator().manual_seed(seed)
    return camri_data.DataSet(
        "tiny-rgb",
        torch.randint(0, 256, (n_train, 3, 8, 8), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n_train,), generator=g),
        torch.randint(0, 256, (n_test, 3, 8, 8), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n_test,), generator=g),
        [str(k) for k in range(10)],
    )


def _config(**overrides) -> TrainConfig:
    values = dict(
        dataset="tiny-rgb",
        loss="camri",
        important=[3],
        margin=[0.2],
        scale=8.0,
        epochs=1,
        batch_size=16,
        eval_batch_size=32,
        width=0.125,
        z_dim=16,
        bn_momentum=0.1,
        device="cpu",
        validation_fraction=0,  # these tests count the images of tiny made-up sets, all of them trained
    )
    values.update(overrides)
    return TrainConfig(**values)


class Counter:
    """Images through the backbone in training and in evaluation mode (a forward pre-hook), and
    optimiser steps."""

    def __init__(self, model, optimizer):
        self.train = self.eval = self.steps = 0
        model.backbone.register_forward_pre_hook(self._forward)
        optimizer.register_step_post_hook(self._step)

    def _forward(self, module, inputs):
        if module.training:
            self.train += len(inputs[0])
        else:
            self.eval += len(inputs[0])

    def _step(self, optimizer, args, kwargs):
        self.steps += 1


def test_a_run_trains_and_evaluates_on_its_data_as_it_is_now_not_on_a_stale_copy(tmp_path):
    warm, timed = _dataset(16, 8, seed=1), _dataset(200, 72, seed=2)
    run = Run(_config(), tmp_path, quiet=True, dataset=warm)
    model, optimizer = run.build_model()
    count = Counter(model, optimizer)
    first = run.train_epoch(model, optimizer, 1)  # the warm-up shape: the copy on the device is made here
    run.evaluate(model)
    assert (count.train, count.steps, count.eval) == (16, 1, 8) and first.images == 16

    run.data = timed  # what the benchmark did between its warm-up and its timed calls
    result = run.train_epoch(model, optimizer, 2)
    ev = run.evaluate(model)
    assert count.train - 16 == result.images == 200
    assert count.steps - 1 == result.steps == math.ceil(200 / 16)
    assert count.eval - 8 == ev["images"] == len(ev["labels"]) == 72

    # Replacing one tensor of the data set counts as new data too.
    run.data.x_train, run.data.y_train = warm.x_train[:5], warm.y_train[:5]
    assert run.train_epoch(model, optimizer, 3).images == 5 and count.train - 216 == 5


def test_train_epoch_counts_the_partial_last_batch_and_its_progress_shows_the_loss_per_image():
    data = _dataset(37, 4)  # batches of 16, 16, 5
    placement = loop.Placement(torch.device("cpu"))
    model, optimizer = loop.build_model(_config(), in_channels=3, num_classes=10, placement=placement)
    count = Counter(model, optimizer)

    class Bar:
        n, postfix = 0, None

        def update(self, k):
            self.n += k

        def set_postfix(self, loss):
            self.postfix = loss

    bar = Bar()
    result = loop.train_epoch(
        model, optimizer, data.x_train, data.y_train, batch_size=16, seed=0, epoch=1, placement=placement, progress=bar
    )
    assert (result.images, result.steps, count.train, count.steps) == (37, 3, 37, 3)
    assert bar.n == 3
    # The running loss is over the 37 images seen, not 3 x 16 = 48 (the old formula's).
    assert float(bar.postfix) == pytest.approx(result.loss, abs=1e-4)
    assert 0 <= result.accuracy <= 1 and result.seconds > 0 and result.images_per_s > 0


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_batch_and_the_model_use_the_resolved_memory_format(channels_last):
    data = _dataset(20, 6)
    placement = loop.Placement(torch.device("cpu"), channels_last=channels_last)
    model, optimizer = loop.build_model(_config(), in_channels=3, num_classes=10, placement=placement)
    formats = []
    model.backbone.register_forward_pre_hook(
        lambda module, inputs: formats.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    loop.train_epoch(
        model, optimizer, data.x_train, data.y_train, batch_size=8, seed=0, epoch=1, placement=placement, augment=True
    )
    loop.evaluate(model, data.x_test, data.y_test, batch_size=4, placement=placement)
    assert formats == [channels_last] * (3 + 2)
    conv = model.backbone.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_run_uses_the_loop_with_its_resolved_settings(tmp_path):
    run = Run(_config(channels_last="off"), tmp_path, quiet=True, dataset=_dataset(8, 4))
    assert run.placement == loop.Placement(torch.device("cpu"), amp=False, channels_last=False)
    run.channels_last = True  # as a resumed run that started in channels_last sets it
    assert run.placement.channels_last


def test_the_amp_auto_rule_is_float32_on_every_cpu_and_bf16_on_cuda(monkeypatch):
    import camri.train as camri_train

    for native in (False, True):  # auto does not switch on a native-bf16 CPU until that is measured
        monkeypatch.setattr(camri_train, "cpu_has_bf16", lambda: native)
        assert not resolve_amp("auto", torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cuda"))
    assert not resolve_amp("auto", torch.device("mps"))
    assert resolve_amp("bf16", torch.device("cpu")) and not resolve_amp("off", torch.device("cuda"))


def test_a_non_finite_loss_names_the_epoch_and_step():
    data = _dataset(32, 4)
    placement = loop.Placement(torch.device("cpu"))
    model, optimizer = loop.build_model(
        _config(loss="ce", important=[]), in_channels=3, num_classes=10, placement=placement
    )
    with torch.no_grad():
        model.backbone.embed.weight.fill_(float("nan"))
    with pytest.raises(loop.NonFiniteLossError, match="epoch 4, step 1 of 2"):
        loop.train_epoch(
            model, optimizer, data.x_train, data.y_train, batch_size=16, seed=0, epoch=4, placement=placement
        )
