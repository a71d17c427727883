"""results.load as a DataFrame, and the leaderboards as Markdown and LaTeX tables."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli
from densbench import results
from densbench.report.leaderboard import Cell, Leaderboard, best_of, mean_se, tex_escape, to_latex, to_markdown
from densbench.report.sweep import main as report_main


@pytest.fixture(scope="module")
def fast_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_cli(["-m", "experiment=fast", "loss=kl,nll", "seed=0,1", "logger=none", "name=tiny"], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "multirun" / "tiny"


def test_load_has_one_row_per_run_equal_to_its_result_json(fast_sweep):
    frame = results.load(fast_sweep)
    files = sorted(fast_sweep.rglob("result.json"))
    # the headline metrics (densbench.metric_catalog) close the row, in their order
    from densbench.metric_catalog import HEADLINE

    headline = [m for m in HEADLINE if m in frame.columns]
    assert list(frame.columns[:3]) == ["loss", "seed", "status"] and list(frame.columns[-len(headline):]) == headline
    assert headline[:2] == ["nll", "crps"]
    assert len(frame) == len(files) == 4
    for path in files:
        res = json.loads(path.read_text())
        row = frame.loc[path.parent.name]
        assert row["status"] == res["status"] and row["loss"] == res["labels"]["loss"]
        assert row["source_hash"] == res["provenance"]["source_hash"] and row["config_hash"] == res["config_hash"]
        for name, value in res["metrics"].items():
            assert (value is None and math.isnan(row[name])) or row[name] == value, name
    # the keys the sweep varied are columns; the ones it did not are not
    assert {"loss._target_", "seed"} <= set(frame.columns)
    assert "optimizer.lr" not in frame.columns and "dataset.name" not in frame.columns


def test_load_takes_a_glob_and_refuses_a_path_without_results(fast_sweep, tmp_path):
    frame = results.load(str(fast_sweep / "*seed=1*" / "result.json"))
    assert len(frame) == 2 and set(frame["seed"]) == {1}
    with pytest.raises(FileNotFoundError, match="no results at"):
        results.load(tmp_path / "nothing-here*")


def test_unreadable_runs_are_named_by_load_and_the_latex_command_and_an_empty_folder_is_one_line(fast_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(fast_sweep, sweep)
    damaged = sorted(sweep.rglob("result.json"))[0]
    damaged.write_text("[1, 2]")
    with pytest.warns(UserWarning, match=re.escape(f"{damaged} (malformed: not a JSON object but list)")):
        frame = results.load(sweep)
    assert len(frame) == 3
    with pytest.raises(SystemExit) as code:
        report_main([str(sweep), "--out", str(tmp_path / "tables"), "--format", "latex"])
    assert code.value.code != 0 and f"left out of the tables: {damaged}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable results at") as err:
        results.load(tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_the_command_line_example_prints_the_rows(fast_sweep):
    code = f"import densbench.results as r; print(r.load({str(fast_sweep)!r})[['loss', 'nll', 'crps']])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()  # the column names, the index name, then one line per run
    assert len(lines) == 6 and lines[0].split() == ["loss", "nll", "crps"] and lines[1].strip() == "run"


def test_best_is_marked_at_the_printed_precision():
    assert best_of([0.1234, 0.1231, float("nan"), None], 3) == [True, True, False, False]
    assert best_of([0.2, 0.1], 2, lower=False) == [True, False]
    assert best_of([0.2, float("nan"), None], 2) == [False, False, False]  # one value beats no rival
    assert best_of([1.234, float("inf")], 2) == [True, False]  # an infinite score (a Cauchy's CRPS) is a rival


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def check_latex(tex: str, columns: int) -> None:
    """A LaTeX-free check of a table's syntax: environments, braces, math, cells per row, escaped text."""
    begins, ends = re.findall(r"\\begin\{(\w+)\}", tex), re.findall(r"\\end\{(\w+)\}", tex)
    assert begins == ends[::-1], (begins, ends)
    assert _balanced(tex)
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    assert len(spec) == columns
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    for row in rows:
        assert row.count("&") - row.count(r"\&") == columns - 1, row
        assert row.count("$") % 2 == 0, row
    for line in tex.splitlines():
        text = re.sub(r"\$[^$]*\$", "", line)  # outside math mode
        assert not re.search(r"(?<!\\)[_%#&]", text.replace(" & ", " ")), line


def test_a_mean_over_runs_is_no_figure_when_a_run_lacks_the_value():
    # a Student-t ensemble's CRPS was null on the splits whose members were Student-t, and the table showed the
    # mean of the other splits as the ensemble's
    assert mean_se([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(7 / 3 / 3)))
    for gap in (None, math.nan, math.inf):
        m, se = mean_se([1.0, gap, 4.0])
        assert math.isnan(m) and se is None
    assert mean_se([3.0]) == (3.0, None)


def test_latex_table_content_and_syntax():
    board = Leaderboard("A_caption with 50% & more", "dataset", ["nll_gauss", "MCD 2016"],
                        [("boston", [Cell(2.30, 0.045, True), Cell(2.46, 0.06)]), ("wine", [Cell(-0.5, None), Cell(float("nan"))])],
                        notes="± is a standard error")
    tex = to_latex(board)
    check_latex(tex, 3)
    assert r"boston & $\mathbf{2.30 \pm 0.04}$ & $2.46 \pm 0.06$ \\" in tex  # 0.045 is stored just below, so it prints as 0.04
    assert r"wine & $-0.50$ & - \\" in tex
    assert r"\caption{A\_caption with 50\% \& more}" in tex and r"nll\_gauss" in tex
    md = to_markdown(board)
    assert "| boston | **2.30 ± 0.04** | 2.46 ± 0.06 |" in md and "| wine | -0.50 | - |" in md
    assert tex_escape("a_b#c") == r"a\_b\#c"


def test_report_cli_writes_a_latex_leaderboard_with_the_sweeps_numbers(fast_sweep, tmp_path):
    out = tmp_path / "tables"
    report_main([str(fast_sweep), "--out", str(out), "--format", "latex"])
    tex = (out / "leaderboard.tex").read_text()
    check_latex(tex, 5)
    frame = results.load(fast_sweep)
    for loss, runs in frame.groupby("loss"):
        mean = runs["nll"].mean()
        assert f"{mean:.3f}" in tex, (loss, mean)
    best = min(frame.groupby("loss")["nll"].mean())
    assert rf"\mathbf{{{best:.3f}" in tex
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\begin{document}\\input{" + str(out / "leaderboard") + "}\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_csv_logger_beside_tensorboard_gets_the_same_final_metrics(tmp_path):
    import csv

    from densbench.runs.execution import run_job
    from conftest import make_cfg

    res = run_job(make_cfg("experiment=fast", "logger=[tensorboard,csv]"), tmp_path)
    assert res["status"] == "ok" and {"tensorboard", "csv"} <= set(res["artifacts"])
    rows = list(csv.DictReader(open(tmp_path / res["artifacts"]["csv"] / "metrics.csv")))
    final = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v}
    assert final and all(final[f"test/{k}"] == pytest.approx(v) for k, v in res["metrics"].items()
                         if f"test/{k}" in final and v is not None)
    assert any(r.get("val/nll") for r in rows) and any(r.get("train/loss") for r in rows)
    assert (tmp_path / res["artifacts"]["csv"] / "hparams.yaml").exists()
    assert list((tmp_path / res["artifacts"]["tensorboard"]).glob("events.out.tfevents.*"))


def test_tensorboard_declaration_is_replaced_whole_and_a_broken_run_does_not_fail_the_sweep(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    from conftest import make_cfg
    from densbench.report import tb_experiment
    from densbench.report.sweep import sweep_end
    from densbench.runs.execution import run_job

    runs = [(tmp_path / f"s{seed}", run_job(make_cfg("experiment=fast", f"seed={seed}"), tmp_path / f"s{seed}")) for seed in (0, 1)]
    dirs = [(d / res["artifacts"]["tensorboard"], res) for d, res in runs]

    def declared():
        assert not list(tmp_path.glob("*tfevents*"))  # none at the root, where TensorBoard lists a run "."
        (path,) = tmp_path.rglob(tb_experiment.FILE)  # in one run's folder
        (value,) = [v for e in EventFileLoader(str(path)).Load() for v in e.summary.value]
        exp = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
        return {h.name for h in exp.hparam_infos if h.differs}

    tb_experiment.declare(tmp_path, dirs[:1])
    assert declared() == set()  # one run: nothing differs
    tb_experiment.declare(tmp_path, dirs)  # a second sweep end (the sweep extended) replaces the first
    assert declared() == {"seed"} and not list(tmp_path.glob(".hparams-*"))
    (dirs[1][0] / "hparams.yaml").write_text("seed: [unclosed")
    sweep_end(tmp_path, runs)
    assert f"the sweep's tensorboard record was not written: ValueError: {dirs[1][0] / 'hparams.yaml'} is not readable YAML" \
        in capsys.readouterr().err
    assert declared() == {"seed"}  # the last good declaration stands


def test_mlflow_sweep_is_one_store_whose_runs_mlflows_own_client_lists_with_metrics_params_and_figures(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # two worker processes open the new store at once: its tables must be created once
    proc = run_cli(["-m", "experiment=fast", "logger=mlflow", "figures=true", "loss=kl,nll", "launcher=parallel",
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INFO" not in proc.stderr  # MLflow's table creation is not news
    found = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "mr").rglob("result.json")}
    stores = {(tmp_path / "mr" / name / res["artifacts"]["mlflow"]).resolve() for name, res in found.items()}
    assert stores == {(tmp_path / "mr").resolve()}  # one store for the sweep, beside its runs
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # a SQLite store: MLflow's client reads it as it is
    client = MlflowClient(tracking_uri=f"sqlite:///{stores.pop() / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("densbench").experiment_id])}
    assert set(runs) == set(found) and all(r.info.status == "FINISHED" for r in runs.values())
    for name, res in found.items():
        run = runs[name]
        metrics, params = run.data.metrics, run.data.params
        assert metrics["test/nll"] == pytest.approx(res["metrics"]["nll"]) and metrics["test/crps"] == pytest.approx(res["metrics"]["crps"])
        assert params["loss"] == res["labels"]["loss"] and params["dataset"] == "hetero_sine"
        history = client.get_metric_history(run.info.run_id, "val/nll")
        assert [m.step for m in history] == res["curves"]["train_step"]
        assert {"predictive.png", "calibration.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_logger_whose_package_is_missing_is_refused_with_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from conftest import make_cfg
    from densbench.training import job_log
    from densbench.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r'logger=mlflow needs the mlflow package.*pip install "densbench\[mlflow\]"'):
        job_log.make(make_cfg("logger=mlflow").logger, tmp_path)


@pytest.mark.parametrize("name", ["experiment=fast,seed=1", "label=it's", 'label="quoted"'])
def test_a_resumed_mlflow_run_is_found_by_any_run_directory_name(name):
    # the run a resumed job continues is searched by its name; a quote in it must not break the filter
    search = pytest.importorskip("mlflow.utils.search_utils")
    from densbench.training.job_log import _quoted

    parsed = search.SearchUtils.parse_search_filter(f"tags.`mlflow.runName` = {_quoted(name)}")
    assert parsed == [{"type": "tag", "key": "mlflow.runName", "comparator": "=", "value": name}]
