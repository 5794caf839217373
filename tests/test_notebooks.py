"""The notebooks and the headless reproduction (camri.reproduce, camri.study, camri.notebooks): committed
notebooks are clean; a tiny profile goes end to end through `camri reproduce` (grid, Fig. 3 runs, every
notebook under papermill); figures are real images, tables have their rows; `camri figures` re-renders from
stored results without training; a failing notebook makes the command fail loudly; papermill works by hand
with the kernel.

One module-scoped fixture trains the smoke grid once (digits, width 0.125, z_dim 16, one epoch, one seed:
5 grid runs and 2 Fig. 3 runs) and executes all notebooks; the other tests read its results."""

import ast
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import papermill
import pytest
import yaml
from matplotlib.figure import Figure
from PIL import Image

from camri import analysis, claims, cli, notebooks, posthoc, protocol, reproduce, study, sweep, tables
from camri.losses import LOSSES
from camri.profile import parse_profile

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STEMS = [
    "00_data",
    "01_ce_baseline",
    "02_arcface",
    "03_camri",
    "04_table1",
    "05_angles",
    "06_fig3_feature_circle",
    "07_fig2_loss_contours",
]

SMOKE = """\
name: smoke
datasets: [digits]
seeds: [0]
train: {epochs: 1, width: 0.125, z_dim: 16, bn_momentum: 0.1, device: cpu}
important: {roles: [worst1]}
methods:
  ce: {}
  arcface: {margin: [4pi/64], scale: [16]}
  camri: {margin: [4pi/64], scale: [16]}
  wce: {weight: [2]}
  crwwce: {weight: [2], fp_weight: [1]}
executor: {kind: local, workers: 2}
fig3: {epochs: 1, dataset: digits}
notebooks:
  00_data: {samples_per_class: 2}
  07_fig2_loss_contours: {resolution: 41}
"""

# Every figure the notebooks write for the smoke profile (digits; worst1 only).
FIGURES = [
    "00_digits_class_counts",
    "00_digits_samples",
    "01_digits_ce_recall_per_class",
    "01_digits_ce_learning_curves",
    "02_digits_learning_curves",
    "02_digits_worst1_tradeoff",
    "03_digits_worst1_tradeoff",
    "04_table1",
    "05_digits_worst1_angle_histograms",
    "05_relative_variance",
    "06_fig3_feature_circle",
    "07_fig2_loss_contours",
]


def camri_command(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "camri", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def files_below(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def camri_main(*args) -> tuple[int, str]:
    """`camri ARGS` in this process (no second interpreter start-up): exit status and what it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli.main([str(a) for a in args])
    return status, buffer.getvalue()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    profile = base / "smoke.yaml"
    profile.write_text(SMOKE)
    results = base / "results"
    status, stdout = camri_main("reproduce", "--profile", profile, "--results-dir", results)
    assert status == 0, stdout[-5000:]
    return SimpleNamespace(base=base, profile=profile, results=results, out=results / "smoke", stdout=stdout)


# ---- the committed notebooks ---------------------------------------------------------------------------


def test_the_numbered_notebooks_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == STEMS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_that_papermill_reads_completely(path):
    book = nbformat.read(path, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = [node.targets[0].id for node in ast.parse(tagged[0].source).body]
    declared = papermill.inspect_notebook(str(path))
    assert list(declared) == assigned  # papermill skips lines it cannot parse (e.g. a second "=")
    assert notebooks.declared_parameters(path) == declared
    assert declared["PROFILE"]["default"] == '"demo"' and declared["RESULTS_DIR"]["default"] == "None"
    assert declared.get("TRAIN", {"default": "True"})["default"] == "True"
    assert book.metadata.kernelspec.name == notebooks.KERNEL_NAME


def test_ensure_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    name = notebooks.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(name)
    assert notebooks._same_python(spec.argv[0])


def test_profile_parameters_match_notebook_names_ignoring_case(tmp_path):
    path = REPO / "notebooks" / "07_fig2_loss_contours.ipynb"
    profile = parse_profile(
        {
            "name": "p",
            "datasets": ["digits"],
            "notebooks": {"07_fig2_loss_contours": {"resolution": 21, "Margin": "8pi/64"}},
        }
    )
    parameters = notebooks.notebook_parameters(path, profile, {"PROFILE": "x", "TRAIN": False, "OTHER": 1})
    assert parameters == {"PROFILE": "x", "RESOLUTION": 21, "MARGIN": "8pi/64"}
    profile.notebooks["07_fig2_loss_contours"] = {"resolutions": 3}
    with pytest.raises(
        ValueError,
        match="notebooks.07_fig2_loss_contours.resolutions: the notebook has no such "
        "parameter; it has PROFILE, RESULTS_DIR",
    ):
        notebooks.notebook_parameters(path, profile, {})


def test_fig3_specs_come_from_the_profile(tmp_path):
    profile = parse_profile(
        {
            "name": "p",
            "datasets": ["digits"],
            "data_dir": str(tmp_path / "data"),
            "train": {"epochs": 7, "width": 0.5, "validation_groups": True},
            "fig3": {"margin": "8pi/64", "scale": 8},
        }
    )
    ce, camri = sweep.fig3_specs(profile, tmp_path)
    assert not ce.config.validation_groups  # the grid's GTSRB tracks; digits and MNIST have no groups
    assert ce.config.dataset == "digits"  # no MNIST in that data directory
    assert (ce.config.z_dim, ce.config.epochs, ce.config.width, ce.config.loss) == (2, 7, 0.5, "ce")
    assert (camri.config.loss, camri.config.important, camri.config.scale) == ("camri", (3,), 8.0)
    assert camri.key == "fig3/digits/camri/c3_m8pi64_s8/seed0"  # apart from the grid's keys in jobs.json
    assert camri.out_dir == tmp_path / "p" / camri.key
    profile = parse_profile({"name": "p", "datasets": ["digits"], "fig3": {"epochs": 2, "dataset": "digits"}})
    assert sweep.fig3_specs(profile, tmp_path)[0].config.epochs == 2
    # The committed results/cpu folder's Fig. 3 runs are found where they were trained (default settings).
    cpu = sweep.fig3_specs(REPO / "results" / "cpu" / "cpu-jpeg.yaml", REPO / "results")
    assert all(s.finished for s in cpu) and [s.key for s in cpu] == [
        "fig3/digits/ce/default/seed0",
        "fig3/digits/camri/c3_m4pi64_s16/seed0",
    ]


def test_fig3_local_runs_use_the_profiles_workers_per_gpu(tmp_path, monkeypatch):
    seen = {}

    def fake_run_local(specs, workers=None, workers_per_gpu=1, bar=None):
        seen.update(workers=workers, workers_per_gpu=workers_per_gpu)
        return {s.key: "done" for s in specs}

    from camri import grid

    monkeypatch.setattr(grid, "run_local", fake_run_local)
    profile = parse_profile(
        {
            "name": "p",
            "datasets": ["digits"],
            "fig3": {"dataset": "digits"},
            "executor": {"workers": 3, "workers_per_gpu": 4},
        }
    )
    study.Study(profile, str(tmp_path)).fig3_runs()
    assert seen == {"workers": 3, "workers_per_gpu": 4}


def test_reproduce_checks_every_data_set_before_training(tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: p\ndatasets: [digits, awa2]\ndata_dir: {tmp_path / 'data'}\n")
    assert cli.main(["reproduce", "--profile", str(profile), "--results-dir", str(tmp_path / "r")]) == 2
    assert "AwA2-data.zip" in capsys.readouterr().err
    assert not (tmp_path / "r" / "p" / "runs").exists()


def test_figures_reports_missing_runs_and_trains_nothing(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\ndatasets: [digits]\nseeds: [0]\ntrain: {epochs: 1}\n")
    lines = []
    assert reproduce.figures(str(profile), results_dir=tmp_path / "r", log=lines.append) == 1
    assert "1 of 1 CE baseline runs of profile 'p' are not finished (e.g. digits/ce/default/seed0)" in lines[0]
    assert f"camri reproduce --profile {profile}" in lines[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("config.json"))


def test_the_closing_line_names_table1_only_when_it_is_there(tmp_path):
    assert notebooks.outputs_line(tmp_path) == f"figures: {tmp_path / 'figures'}\ntables: {tmp_path / 'tables'}"
    (tmp_path / "table1.md").write_text("| |\n")
    assert notebooks.outputs_line(tmp_path).endswith(f"tables: {tmp_path / 'tables'} and {tmp_path / 'table1.md'}")


def test_saved_tables_name_data_sets_as_readers_know_them(tmp_path):
    # Issue 15: results/cpu's tables said imagefolder:/work/shared/data/cifar10-jpeg.zip.
    smoke = study.Study(parse_profile(yaml.safe_load(SMOKE), "smoke"), str(tmp_path), train=False)
    frame = pd.DataFrame({"dataset": ["imagefolder:/data/x/cifar10-jpeg.zip", "gtsrb"], "paths": [(), ()], "n": [1, 2]})
    shown = smoke.save_table(frame, "probe")
    assert list(shown.columns) == ["dataset", "n"] and list(shown["dataset"]) == ["CIFAR-10 (JPEG copy)", "GTSRB"]
    written = (tmp_path / "smoke" / "tables" / "probe.md").read_text() + (
        tmp_path / "smoke" / "tables" / "probe.csv"
    ).read_text()
    assert "CIFAR-10 (JPEG copy)" in written and "imagefolder" not in written and "/data/x" not in written


def test_markdown_table():
    frame = pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x|y", (1, 2)]})
    assert analysis.markdown_table(frame) == "| a | b |\n|---|---|\n| 1.235 | x\\|y |\n| – | 1, 2 |"


# ---- the smoke profile end to end ---------------------------------------------------------------------


def test_reproduce_trains_the_grid_and_fig3_then_executes_every_notebook(smoke):
    assert len(list((smoke.out / "runs").rglob("summary.json"))) == 5  # CE, ArcFace, CAMRI, WCE, CRWWCE
    assert len(list((smoke.out / "fig3").rglob("summary.json"))) == 2
    for stem in STEMS:
        assert f"{stem}.ipynb" in smoke.stdout
    assert sorted(p.stem for p in (smoke.out / "notebooks").glob("*.ipynb")) == STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_every_notebook_executed_under_papermill_with_the_profile(smoke, stem):
    book = nbformat.read(smoke.out / "notebooks" / f"{stem}.ipynb", as_version=4)
    injected = [c for c in book.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and str(smoke.results) in injected[0].source
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # its figures are shown
    assert not [o for o in outputs if "IProgress" in o.get("text", "")]


# The notebooks with an interactive explorer (camri.explore), and the class each one's widget cell shows.
EXPLORERS = {"05_angles": "AngleExplorer", "07_fig2_loss_contours": "LossExplorer"}


@pytest.mark.parametrize("stem", sorted(EXPLORERS))
def test_the_widget_cells_render_their_initial_state_under_papermill(smoke, stem):
    book = nbformat.read(smoke.out / "notebooks" / f"{stem}.ipynb", as_version=4)
    cells = [c for c in book.cells if c.cell_type == "code" and f"explore.{EXPLORERS[stem]}(" in c.source]
    assert len(cells) == 1
    assert [o.output_type for o in cells[0].outputs] == ["execute_result"]  # no error, no stray output
    view = cells[0].outputs[0].data["application/vnd.jupyter.widget-view+json"]
    # The widget state papermill stores with the notebook: the explorer's Output holds its first figure.
    state = book.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert view["model_id"] in state
    shown = [o for model in state.values() if model["model_name"] == "OutputModel" for o in model["state"]["outputs"]]
    assert [o["output_type"] for o in shown] == ["display_data"]
    assert "image/png" in shown[0]["data"]


def test_figures_are_png_and_pdf_images(smoke):
    for stem in FIGURES:
        png, pdf = smoke.out / "figures" / f"{stem}.png", smoke.out / "figures" / f"{stem}.pdf"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert min(image.size) > 100
        assert pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 1000
    assert sorted(p.stem for p in (smoke.out / "figures").glob("*.png")) == sorted(FIGURES)


def test_tables_have_their_rows(smoke):
    table1 = pd.read_csv(smoke.out / "table1.csv")
    assert list(table1.columns) == list(tables.TABLE1_COLUMNS)
    assert list(table1["method"]) == list(tables.TABLE1_METHODS)  # one cell: digits worst1
    assert set(table1["important"]) == {"worst1"} and (table1["n_seeds"] == 1).all()
    assert {p.suffix for p in smoke.out.glob("table1.*")} == {".csv", ".md", ".tex"}
    folder = smoke.out / "tables"
    rows = {
        "00_datasets": 1,
        "00_digits_class_counts": 10,
        "01_ce_runs": 1,
        "01_digits_ce_recall_per_class": 10,
        "01_digits_important_classes": 1,
        "02_digits_arcface_settings": 2,  # CE and ArcFace (no L2-softmax)
        "03_digits_worst1_settings": 10,  # 5 settings, each with its +bias row
        "03_digits_worst1_selected": 20,  # 10 methods (5 and their +bias) x maintaining / unconstrained
        "03_paired_gains": 2,
        "04_table1_long": 6,  # the paper's 5 rows and CE+bias
        "04_selected_settings": 20,
        "05_relative_variance": 3,
        "06_fig3": 2,
    }
    for name, count in rows.items():
        assert len(pd.read_csv(folder / f"{name}.csv")) == count, name
        markdown = (folder / f"{name}.md").read_text().strip().splitlines()
        assert len(markdown) == count + 2, name  # header, rule, rows
    # and the choices that differ between the two protocols (how many depends on the run: not counted here)
    assert sorted(p.stem for p in folder.glob("*.csv")) == sorted([*rows, "04_selection_differences"])
    assert "paths" not in pd.read_csv(folder / "03_digits_worst1_settings.csv").columns
    fig3 = pd.read_csv(folder / "06_fig3.csv")
    assert list(fig3["method"]) == ["CE", "CAMRI"] and set(fig3["class"]) == {3}


def test_claims_md_is_generated_with_a_verdict_for_every_claim(smoke):
    text = (smoke.out / "claims.md").read_text()
    assert "Generated by `camri reproduce`" in text and "on the validation split" in text
    for claim in ("important", "recall", "versus", "angles", "best"):
        assert f"- **{claim}**" in text, claim
    assert "**Warning: 1 seed(s)**" in text  # the smoke profile has one seed: notebook 04 warns below 5


def test_figures_command_rerenders_from_stored_results_without_training(smoke, tmp_path):
    # The notebooks that read runs, each in its own way (baseline only, the whole grid with Table 1, the
    # angles, Fig. 3's runs); all eight ran under papermill in the fixture already.
    only = ["01", "04", "05", "06"]
    results = tmp_path / "results"
    shutil.copytree(smoke.results, results)
    out = results / "smoke"
    shutil.rmtree(out / "figures")
    shutil.rmtree(out / "tables")
    (out / "table1.csv").unlink()
    before = {folder: files_below(out / folder) for folder in ("runs", "fig3")}
    proc = camri_command("figures", "--profile", smoke.profile, "--results-dir", results, "--only", *only)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert {folder: files_below(out / folder) for folder in ("runs", "fig3")} == before  # nothing written there
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == sorted(f for f in FIGURES if f[:2] in only)
    assert len(pd.read_csv(out / "table1.csv")) == len(tables.TABLE1_METHODS)
    book = nbformat.read(out / "notebooks" / "01_ce_baseline.ipynb", as_version=4)
    injected = next(c for c in book.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "TRAIN = False" in injected.source


def test_figures_partial_renders_a_campaign_in_progress_and_says_so_everywhere(smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke.results, results)
    out = results / "smoke"
    camri_run = next(p.parent for p in (out / "runs").rglob("summary.json") if "/camri/" in str(p))
    (camri_run / "summary.json").unlink()  # CAMRI's run still in progress: its cell has no finished run
    refused = camri_command("figures", "--profile", smoke.profile, "--results-dir", results, "--only", "04")
    assert refused.returncode == 1 and "1 of 4 runs of the methods stage" in refused.stdout
    proc = camri_command(
        "figures", "--profile", smoke.profile, "--results-dir", results, "--only", "02", "03", "04", "05", "--partial"
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    mark = "PARTIAL: 3 of 4 runs of the methods stage have finished"
    assert mark in (out / "table1.md").read_text() and mark in (out / "table1.tex").read_text()
    assert (out / "claims.md").read_text().count(mark) == 1  # once, at the head of the summary
    quoted = claims.quote_claims("<!-- claims: smoke/claims.md -->\n<!-- /claims -->\n", results)
    assert mark in quoted  # a quote of the summary alone (README, docs) still says PARTIAL
    for stem in ("02_arcface", "03_camri", "04_table1", "05_angles"):
        assert mark in (out / "notebooks" / f"{stem}.ipynb").read_text(), stem
    table = pd.read_csv(out / "table1.csv").set_index("method")
    assert table.at["CAMRI", "n_seeds"] == 0 and table.at["ArcFace", "n_seeds"] == 1  # the missing cell is empty
    in_progress = study.open_study(smoke.profile, results, train=False, partial=True)
    figure = Figure()
    in_progress.save(figure, "partial_probe")
    assert any(mark in t.get_text() for t in figure.texts)  # every saved figure carries the mark itself
    # The CAMRI run finishes during the render: the render's count stays its first (one snapshot throughout).
    shutil.copy(smoke.results / camri_run.relative_to(results) / "summary.json", camri_run / "summary.json")
    assert len(in_progress.missing()[0]) == 1 and mark in in_progress.partial_headline()
    assert study.open_study(smoke.profile, results, train=False, partial=True).missing() == ([], 4)
    complete = study.open_study(smoke.profile, smoke.results, train=False, partial=True)
    assert complete.partial_note() == "" and complete.missing() == ([], 4)  # nothing missing: no mark
    with pytest.raises(ValueError, match="partial = True reads stored runs only"):
        study.open_study(smoke.profile, results, train=True, partial=True)


def test_a_failing_notebook_fails_the_command_with_its_cell_and_traceback(smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke.results, results)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    broken = ["y = 2", "def f():\n    raise ValueError('boom: 42')\n\nf()", "never = 'reached'"]
    for name, cells in {"00_fine": ["x = 1"], "01_broken": broken, "02_after": ["z = 3"]}.items():
        book = nbformat.v4.new_notebook()
        book.cells = [
            nbformat.v4.new_code_cell('PROFILE = "demo"\nRESULTS_DIR = None', metadata={"tags": ["parameters"]})
        ]
        book.cells += [nbformat.v4.new_code_cell(source) for source in cells]
        nbformat.write(book, folder / f"{name}.ipynb")
    status, output = camri_main(
        "reproduce", "--profile", smoke.profile, "--results-dir", results, "--notebooks", folder
    )
    assert status == 1
    assert "notebook 01_broken.ipynb failed" in output
    assert "raise ValueError('boom: 42')" in output  # the failing cell's source
    assert "ValueError: boom: 42" in output and "f()" in output  # the traceback
    assert "02_after.ipynb" not in output  # stops at the first failure
    assert "5 of 5 runs done" in output  # the grid was finished: nothing retrained
    executed = nbformat.read(results / "smoke" / "notebooks" / "01_broken.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)


def test_papermill_by_hand_with_the_camri_kernel(smoke, tmp_path):
    kernel = notebooks.ensure_kernel()
    out = tmp_path / "fig2.ipynb"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(REPO / "notebooks" / "07_fig2_loss_contours.ipynb"),
            str(out),
            "-k",
            kernel,
            "-p",
            "PROFILE",
            str(smoke.profile),
            "-p",
            "RESULTS_DIR",
            str(tmp_path / "results"),
            "-p",
            "RESOLUTION",
            "21",
            "-p",
            "MARGIN",
            "16pi/64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO / "notebooks",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results" / "smoke" / "figures" / "07_fig2_loss_contours.png").is_file()
    assert json.loads(out.read_text())["metadata"]["papermill"]["parameters"]["MARGIN"] == "16pi/64"


def test_important_classes_fixed_by_the_profile(smoke):
    import yaml

    raw = yaml.safe_load(SMOKE)
    raw["important"] = {"roles": ["worst1"], "classes": {"digits": ["7"]}}
    fixed = study.Study(parse_profile(raw), str(smoke.results), train=False)
    runs = protocol.load_runs(smoke.out / "runs")
    assert fixed.important(runs, "digits").values.tolist() == [["worst1", 7, "7"]]
    chosen = study.Study(parse_profile(yaml.safe_load(SMOKE)), str(smoke.results)).important(runs, "digits")
    assert chosen["role"].tolist() == ["worst1"]
    recorded = json.loads((smoke.out / "important.json").read_text())["digits"][0]  # the grid's choice
    assert chosen["class_index"].iloc[0] == recorded["class_index"]


def test_table1_csv_numbers_recomputed_by_hand_from_the_runs(smoke):
    """Every numeric field of the smoke profile's table1.csv, from its runs' summary.json (and, for CE+bias,
    CE's stored logits), to the CSV contract's 6 significant digits (one seed: the std fields are empty).
    The smoke profile selects on the validation split: the class, the threshold and "qualified" come from
    validation, the reported numbers from test."""
    records = {p.parent: json.loads(p.read_text()) for p in (smoke.out / "runs").rglob("summary.json")}
    summaries = list(records.values())
    ce = [s for s in summaries if s["loss"] == "ce"]
    assert len(ce) == 1
    ce_dir = next(d for d, s in records.items() if s["loss"] == "ce")
    validation = ce[0]["validation"]
    recall = validation["recall"]
    worst1 = min(range(len(recall)), key=lambda k: (round(recall[k], 12), k))  # lowest; ties: lower index
    threshold = validation["accuracy"] - protocol.DEFAULT_TOLERANCE  # the smoke profile keeps the default
    losses = {info.display: name for name, info in LOSSES.items()}
    table = pd.read_csv(smoke.out / "table1.csv", dtype=str, keep_default_na=False)
    assert list(table["class"].unique()) == [ce[0]["classes"][worst1]]
    for row in table.to_dict("records"):
        assert (row["recall_std"], row["accuracy_std"], row["n_seeds"]) == ("", "", "1")
        assert (row["paper_recall"], row["paper_accuracy"]) == ("", "")  # digits is not in the paper
        if row["method"] == "CE+bias":
            # The bias tuned on CE's validation logits (camri.posthoc's rule), applied to its test logits.
            tuned = posthoc.tune_bias([posthoc.load_logits(ce_dir, "validation")], worst1, threshold)
            recall_b, accuracy_b = posthoc.bias_outcomes(*posthoc.load_logits(ce_dir, "test"), worst1, [tuned["bias"]])
            assert (row["recall_mean"], row["accuracy_mean"]) == (f"{recall_b[0]:.6g}", f"{accuracy_b[0]:.6g}")
            assert row["qualified"] == "true"
            continue
        loss = losses[row["method"]]
        (run,) = [s for s in summaries if s["loss"] == loss and s["important"] in ([], [worst1])]
        assert row["recall_mean"] == f"{run['recall'][worst1]:.6g}", row["method"]
        assert row["accuracy_mean"] == f"{run['accuracy']:.6g}", row["method"]
        qualified = run["validation"]["accuracy"] >= threshold - 1e-9
        assert row["qualified"] == ("true" if qualified else "false")
    assert any(len(value.lstrip("0.")) > 2 for value in [*table["recall_mean"], *table["accuracy_mean"]])
