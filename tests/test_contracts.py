"""Contracts the docs state that no other test held to (issue 19): the class count of the important-class
rule (docs/protocol.md), the network's layer list (SETUP.md, camri.models) and its BatchNorm settings
reaching the layers, and `camri figures` never training (docs/reproduction.md, camri.reproduce)."""

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from camri import protocol, tables
from camri.cli import main
from camri.models import PaperCNN

# ---- important classes: K < 3 is an error, K <= 4 gives median = worst2 (docs/protocol.md) -------------


def write_ce_runs(root: Path, recalls_by_seed: list[list[float]]) -> None:
    k = len(recalls_by_seed[0])
    for seed, recall in enumerate(recalls_by_seed):
        directory = root / f"ce/s{seed}"
        directory.mkdir(parents=True)
        config = {
            "dataset": "cifar10",
            "loss": "ce",
            "important": [],
            "margin": [0.2],
            "scale": 16.0,
            "weight": 2.0,
            "fp_weight": 1.0,
            "epochs": 3,
            "seed": seed,
        }
        (directory / "summary.json").write_text(
            json.dumps(
                {
                    "dataset": "cifar10",
                    "loss": "ce",
                    "seed": seed,
                    "classes": [f"c{i}" for i in range(k)],
                    "important": [],
                    "config": config,
                    "accuracy": 0.8,
                    "recall": recall,
                }
            )
        )


@pytest.mark.parametrize("k", [1, 2])
def test_fewer_than_three_classes_is_an_error(tmp_path, k):
    write_ce_runs(tmp_path, [[0.5 + 0.1 * i for i in range(k)]] * 2)
    runs = protocol.load_runs(tmp_path)
    with pytest.raises(
        ValueError,
        match=rf"data set 'cifar10' has {k} classes; worst1, worst2 and median need "
        "at least 3",
    ):
        protocol.choose_important(runs, "cifar10", split="test")
    with pytest.raises(ValueError, match="need at least 3"):
        protocol.select_all(runs, split="test")


@pytest.mark.parametrize(
    "recall, order",
    [
        ([0.9, 0.4, 0.7], [1, 2, 0]),  # K = 3: positions 0, 1 and (3 - 1) // 2 = 1
        ([0.9, 0.4, 0.7, 0.6], [1, 3, 2, 0]),  # K = 4: positions 0, 1 and (4 - 1) // 2 = 1
    ],
)
def test_with_at_most_four_classes_the_median_is_worst2(tmp_path, recall, order):
    write_ce_runs(tmp_path, [recall, recall])
    runs = protocol.load_runs(tmp_path)
    chosen = protocol.choose_important(runs, "cifar10", split="test").set_index("role")
    assert chosen.at["worst1", "class_index"] == order[0]
    assert chosen.at["worst2", "class_index"] == chosen.at["median", "class_index"] == order[1]
    # Table 1 still has both cells, the same class in each.
    table = tables.table1(protocol.select_all(runs, split="test"))
    assert list(table.drop_duplicates("important")["class"]) == [f"c{order[0]}", f"c{order[1]}", f"c{order[1]}"]


def test_with_five_classes_the_median_is_its_own_class(tmp_path):
    write_ce_runs(tmp_path, [[0.9, 0.4, 0.7, 0.6, 0.8]] * 2)  # sorted 1, 3, 2, 4, 0: median = position 2
    chosen = protocol.choose_important(protocol.load_runs(tmp_path), "cifar10", split="test").set_index("role")
    assert list(chosen["class_index"]) == [1, 3, 2]


# ---- the network: the layer list of SETUP.md, and BatchNorm's settings reach the layers -------------------

# ../shared/paper/SETUP.md, "Network and training" (the authors' src/archs.py), verbatim.
SETUP_LAYERS = """
  64, 64, BN, 64, maxpool, dropout 0.25 | 128, 128, BN, 128, maxpool, dropout 0.25 |
  256, 256, BN, 256, 256, 256, BN | 512, 512 | global average pooling |
  dense to z_dim = 512 (He-normal init) + BatchNorm = the feature z | head.
"""


def setup_layers() -> list[tuple]:
    """SETUP.md's list as (kind, value) items, read from its text, not from camri.models.LAYOUT."""
    items = []
    for token in re.split(r"[|,]", SETUP_LAYERS):
        token = token.strip()
        if token.isdigit():
            items.append(("conv", int(token)))
        elif token == "BN":
            items.append(("bn", None))
        elif token == "maxpool":
            items.append(("maxpool", 2))
        elif token.startswith("dropout"):
            items.append(("dropout", float(token.split()[1])))
        elif token == "global average pooling":
            items.append(("gap", None))
        elif token.startswith("dense to z_dim"):
            items += [("dense", int(re.search(r"z_dim = (\d+)", token).group(1))), ("bn", None)]
        else:
            assert token == "head.", token
    return items


def model_layers(net: PaperCNN, momentum: float) -> list[tuple]:
    """The network's layers as the same items, checking each layer's settings on the way."""
    items = []
    modules = [*net.features, net.embed, net.embed_bn]
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            assert (module.kernel_size, module.padding, module.groups) == ((3, 3), (1, 1), 1)  # 3x3 'same'
            assert isinstance(modules[i + 1], nn.ReLU)  # every convolution is followed by its ReLU
            items.append(("conv", module.out_channels))
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            # Keras's BatchNormalization: epsilon 1e-3; the momentum given (PyTorch convention).
            assert (module.eps, module.momentum, module.affine) == (1e-3, momentum, True)
            items.append(("bn", None))
        elif isinstance(module, nn.MaxPool2d):
            assert module.kernel_size == 2 and module.stride == 2
            items.append(("maxpool", module.kernel_size))
        elif isinstance(module, nn.Dropout):
            items.append(("dropout", module.p))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            assert module.output_size == 1
            items.append(("gap", None))
        elif isinstance(module, nn.Linear):
            items.append(("dense", module.out_features))
        else:
            assert isinstance(module, (nn.ReLU, nn.Flatten)), module
    return items


def test_the_network_is_setup_md_layer_list_with_its_batchnorm_settings():
    net = PaperCNN(in_channels=3, width=1.0, z_dim=512, bn_momentum=0.37)
    assert model_layers(net, 0.37) == setup_layers()
    assert sum(kind == "conv" for kind, _ in setup_layers()) == 13


def test_training_settings_reach_the_layers(tmp_path):
    from camri import data as camri_data
    from camri.train import Run, TrainConfig

    config = TrainConfig(dataset="digits", loss="ce", width=0.25, z_dim=8, bn_momentum=0.23, device="cpu")
    model, _ = Run(config, tmp_path, quiet=True, dataset=camri_data.load("digits")).build_model()
    layers = model_layers(model.backbone, 0.23)  # asserts eps 1e-3 and momentum 0.23 on every BatchNorm
    expected = [
        (kind, round(v * 0.25) if kind == "conv" else 8 if kind == "dense" else v) for kind, v in setup_layers()
    ]
    assert layers == expected
    assert model.backbone.features[0].in_channels == 1  # digits is grey


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = PaperCNN(in_channels=1, width=0.125, z_dim=4)
    x = torch.rand(2, 1, 8, 8)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    dropout = [m for m in net.features if isinstance(m, nn.Dropout)]
    assert len(dropout) == 2 and all(m.training for m in dropout)


# ---- `camri figures` never trains (docs/reproduction.md) ------------------------------------------------

PROFILE = """\
name: nofig
datasets: [digits]
seeds: [0]
train: {epochs: 1, width: 0.125, z_dim: 16, bn_momentum: 0.1, device: cpu}
important: {roles: [worst1], classes: {digits: [3]}}
methods:
  ce: {}
  camri: {margin: [4pi/64], scale: [8]}
executor: {kind: local, workers: 1}
"""


def files_below(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def camri(*args) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main([str(a) for a in args])
    return status, buffer.getvalue()


def test_figures_never_trains_when_method_or_fig3_runs_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    profile = tmp_path / "nofig.yaml"
    profile.write_text(PROFILE)
    results = tmp_path / "results"
    common = ["--profile", profile, "--results-dir", results]
    assert camri("grid", *common, "--stage", "baseline")[0] == 0  # the CE baseline only

    before = files_below(results)
    status, out = camri("figures", *common)
    assert status == 1
    assert (
        "1 of 1 runs of the methods stage of profile 'nofig' are not finished (e.g. digits/camri/c3_m4pi64_s8/seed0)"
    ) in out
    assert f"camri reproduce --profile {profile}" in out
    assert files_below(results) == before  # nothing trained, nothing written

    assert camri("grid", *common)[0] == 0  # now every grid run is finished; Fig. 3's two runs are not
    before = files_below(results)
    status, out = camri("figures", *common)
    assert status == 1
    assert re.search(
        r"2 of 2 Fig\. 3 runs of profile 'nofig' are not finished \(e\.g\. fig3/\w+/ce/default/seed0\)", out
    )
    assert files_below(results) == before
    assert not (results / "nofig" / "fig3").exists() and not (results / "nofig" / "notebooks").exists()

    # --only checks what those notebooks read: 01 needs just the (finished) baseline, 06 the Fig. 3 runs.
    executed = []
    monkeypatch.setattr("camri.reproduce.execute_notebooks", lambda *a, only=None, **k: executed.append(only) or True)
    assert camri("figures", *common, "--only", "01")[0] == 0 and executed == [["01"]]
    status, out = camri("figures", *common, "--only", "06")
    assert status == 1 and "2 of 2 Fig. 3 runs" in out and executed == [["01"]]
    shutil.rmtree(results / "nofig" / "runs")
    assert camri("figures", *common, "--only", "07")[0] == 0 and executed == [["01"], ["07"]]  # reads no run
    status, out = camri("figures", *common, "--only", "01", "07")
    assert status == 1 and "CE baseline runs of profile 'nofig' are not finished" in out
