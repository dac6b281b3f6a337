"""``python -m rdt_core.train``: one run without Ray, logged to MLflow like a sweep's trial."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import isolated_env


def run_cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "rdt_core.train", *args], cwd=tmp_path,
                          env=isolated_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_one_run_logs_config_headline_metrics_tables_and_checkpoint(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {steps: 40, eval_every: 20}\nmodel: {max_loops: 5}\n")
    completed = run_cli(tmp_path, str(config), "--set", "train.train_loops=3", "--out", "out/run.jsonl")
    assert completed.returncode == 0, completed.stderr[-2000:]
    reports = [json.loads(line) for line in (tmp_path / "out" / "run.jsonl").read_text().splitlines()]
    assert [report["step"] for report in reports] == [20, 40]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.train_loops"] == "3" and run.data.params["model.max_loops"] == "5"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc/id")] == [20, 40]
    assert "acc/id/loop_05" not in run.data.metrics and len(run.data.metrics) <= 40  # the rest is in tables
    curve = client.get_metric_history(run.info.run_id, "acc_by_loop/id")  # one curve, its step the loop
    assert [m.step for m in curve] == [1, 2, 3, 4, 5]
    assert curve[-1].value == reports[-1]["acc/id/loop_05"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tables", "checkpoint"} <= artifacts
    table = client.download_artifacts(run.info.run_id, "tables/accuracy_by_loop.json", str(tmp_path))
    written = json.loads(Path(table).read_text())
    rows = [dict(zip(written["columns"], row)) for row in written["data"]]
    found = [r["value"] for r in rows if (r["split"], r["hops"], r["loop"], r["measure"]) == ("id", 2, 5, "accuracy")]
    assert found == [reports[-1]["acc/id/hops_2/loop_05"]]
    assert {"path": "tables/halting.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])


@pytest.mark.parametrize(
    "content, args, key",
    [("train: {stepz: 3}\n", [], "train.stepz"), ("{}\n", ["--set", "model.d_model=wide"], "model.d_model"),
     ("train: [1\n", [], "invalid YAML"), (b"train: {steps: 3}\n\xff\n", [], "line 2, column 1: not UTF-8"),
     ("data: {n_entities: 16, n_relations: 2}\n", [], "data.inferred_ratio: only 64 distinct 2-hop id queries"),
     ("- train\n", [], "(top level): expected a mapping")],
)
def test_invalid_config_exits_2_naming_the_key_and_logs_nothing(tmp_path, content, args, key):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content) if isinstance(content, bytes) else config.write_text(content)
    completed = run_cli(tmp_path, str(config), *args)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(config) in lines[0]
    assert not (tmp_path / "mlflow.db").exists()
