"""The HParams experiment a sweep declares to TensorBoard: which hyperparameters and metrics its table shows first.

Left to infer the table from the runs, TensorBoard puts the hyperparameters that differ first (its
HParams tab shows five of each by default), but takes the metric columns as every scalar tag in name
order, so the five shown are test/check_score ... test/crps and not the NLL. A declaration fixes
both, and has to cover every run: TensorBoard reads one experiment per log directory (from whichever
run holds it), so it is written once, from all of the sweep's runs, after they have finished, into
one run's own folder beside that run's events. Not at the sweep's root: TensorBoard makes every
folder holding an event file a run, and a file there lists the root as an empty run named ".".
Torch- and Lightning-free (TensorBoard's own reader and writer): a sweep's end runs it in the
launcher's main process, which trained nothing itself under a parallel launcher.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from densbench.metric_catalog import HEADLINE

FILE = "events.out.tfevents.densbench-hparams"  # "tfevents" in the name is what TensorBoard looks for
SECTIONS = ("test", "test_uncalibrated", "throughput")  # final values (one point per run): the metric columns


def metric_order(tag: str) -> tuple:
    """Sort key of a metric column: the headline test metrics first, then each section's in name order."""
    section, _, name = tag.partition("/")
    first = HEADLINE.index(name) if section == "test" and name in HEADLINE else len(HEADLINE)
    return (SECTIONS.index(section) if section in SECTIONS else len(SECTIONS), first, name)


def final_tags(result: dict[str, Any]) -> set[str]:
    """The scalar tags a run logged with a final value (test/..., throughput/...), from its result.json
    (the same names the module logged; reading them back from the event files costs a second a run)."""
    from densbench.results import EXECUTION_METRICS

    tags = {f"{'throughput' if k in EXECUTION_METRICS else 'test'}/{k}" for k in result.get("metrics") or {}}
    return tags | {f"test_uncalibrated/{k}" for k in result.get("metrics_uncalibrated") or {}}


def _hparam_info(name: str, values: list[Any]) -> Any:
    distinct = sorted({str(v) for v in values})
    info = api_pb2.HParamInfo(name=name, differs=len(distinct) > 1)
    if all(isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend(sorted(set(values)))
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_discrete.extend(sorted({float(v) for v in values}))
    elif all(isinstance(v, str) for v in values):
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(distinct)
    else:  # mixed types across runs (an int here, a string there): a free-text column, filtered by regex
        info.type = api_pb2.DATA_TYPE_STRING
    return info


def experiment(runs: list[tuple[Path, dict[str, Any]]]) -> Any | None:
    """The HParams experiment of these runs (TensorBoard directory, result.json); None when none logged hyperparameters."""
    params, tags = [], set()
    for d, result in runs:
        path = d / "hparams.yaml"
        if path.is_file():
            try:
                params.append(yaml.safe_load(path.read_text()) or {})
            except yaml.YAMLError as e:
                raise ValueError(f"{path} is not readable YAML: {' '.join(str(e).split())}") from e
            tags |= final_tags(result)
    if not params:
        return None
    names = sorted({k for p in params for k in p})
    # a hyperparameter a run does not have (a head's own key) shows as "None" there, as its YAML does
    infos = [_hparam_info(k, [p.get(k) if p.get(k) is not None else "None" for p in params]) for k in names]
    infos.sort(key=lambda info: (not info.differs, info.name))  # the swept keys first: those are displayed
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in sorted(tags, key=metric_order)]
    return api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)


def declare(sweep_dir: Path, runs: list[tuple[Path, dict[str, Any]]]) -> Path | None:
    """Write (or replace) the sweep's experiment into one of its runs' TensorBoard folders, where TensorBoard
    pointed at the sweep finds it (runs: each run's TensorBoard directory and result.json)."""
    exp = experiment(runs)
    if exp is None:
        return None
    data = plugin_data_pb2.HParamsPluginData(experiment=exp, version=metadata.PLUGIN_DATA_VERSION)
    summary = Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=metadata.create_summary_metadata(data))])
    earlier = sorted(Path(sweep_dir).rglob(FILE))
    logged = [(d, res) for d, res in runs if (d / "hparams.yaml").is_file()]
    # a finished run: one resumed would write events that sort before this file, which a running
    # TensorBoard, having read past them, would not pick up
    target = _holder(earlier, [d for d, res in logged if res.get("status") == "ok"] or [d for d, _ in logged]) / FILE
    # written aside and moved into place: an interrupted write leaves the previous declaration whole
    scratch = Path(tempfile.mkdtemp(prefix=".hparams-", dir=target.parent))
    try:
        writer = EventFileWriter(str(scratch))
        writer.add_event(Event(wall_time=time.time(), summary=summary))
        writer.close()
        (written,) = scratch.iterdir()
        os.replace(written, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # TensorBoard shows the first experiment it finds: none other may stay (nor one at the root, from before)
    for stale in earlier:
        if stale.resolve() != target.resolve():
            stale.unlink(missing_ok=True)
    return target


def _holder(earlier: list[Path], folders: list[Path]) -> Path:
    """The run folder to hold the declaration: the one holding it already (a sweep extended keeps it where
    a running TensorBoard found it), else the first by name."""
    runs = {folder.resolve(): folder for folder in folders}
    for path in earlier:
        if path.parent.resolve() in runs:
            return runs[path.parent.resolve()]
    return min(folders)
