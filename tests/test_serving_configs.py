"""The TensorFlow Serving configs parse with their protos and agree with each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving import config as tfs_config

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"


def test_models_config_names_both_models_where_the_pipelines_export_them():
    from pipelines.series import build_parser as series_parser
    from pipelines.text import build_parser as text_parser

    config = tfs_config.read_model_config(SERVING / "models.config")
    models = {m.name: m for m in config.model_config_list.config}
    assert set(models) == {"text", "stock"}
    assert models["text"].base_path == text_parser().get_default("output")
    assert models["stock"].base_path == series_parser().get_default("output")
    makefile = (ROOT / "Makefile").read_text()
    for model in models.values():
        assert model.model_platform == "tensorflow"
        assert model.model_version_policy.latest.num_versions == 2
        assert set(model.version_labels) == {"stable", "canary"}
        assert f"--output {model.base_path}" in makefile  # make demo exports there


def test_batching_and_monitoring_configs_parse():
    batching = tfs_config.read_batching_parameters(SERVING / "batching.config")
    assert batching.max_batch_size.value == 32
    # TensorFlow Serving's CPU advice, written out (not left to defaults): timeout 0, one batch thread per core.
    assert batching.HasField("batch_timeout_micros") and batching.batch_timeout_micros.value == 0
    assert batching.num_batch_threads.value == 2
    assert batching.pad_variable_length_inputs
    monitoring = tfs_config.read_monitoring_config(SERVING / "monitoring.config")
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' base_path: 'x' } config { name: 'a' base_path: 'y' } }",
     "model name 'a' appears twice"),
    ("model_config_list { config { name: 'a' } }", "needs a name and a base_path"),
    ("model_config_list { config { name: 'a' base_pathh: 'x' } }", "base_pathh"),
    ("", "holds no model"),
])
def test_bad_model_configs_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(tfs_config.ConfigError, match=message):
        tfs_config.read_model_config(path)


def test_a_field_tensorflow_serving_does_not_know_is_refused(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n")
    with pytest.raises(tfs_config.ConfigError, match="max_batch_sise"):
        tfs_config.read_batching_parameters(path)


def test_compose_file_and_kubernetes_manifests_agree_on_ports_and_paths():
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    service = compose["services"]["tensorflow-serving"]
    assert service["ports"] == ["8500:8500", "8501:8501"]
    assert "--model_config_file=/config/models.config" in service["command"]
    assert service["working_dir"] == "/" and "../saved_models:/saved_models:ro" in service["volumes"]

    manifests = {path.stem: yaml.safe_load(path.read_text()) for path in (SERVING / "kubernetes").glob("*.yaml")}
    deployment, svc, hpa = manifests["deployment"], manifests["service"], manifests["hpa"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == service["command"]  # the same server flags as the compose file
    assert container["image"] == service["image"]
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    assert {p["port"] for p in svc["spec"]["ports"]} == {8500, 8501}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/text", "port": 8501}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/saved_models", "/config"}
    assert deployment["spec"]["replicas"] >= 2 and hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_real_server_is_the_release_of_the_exporting_tensorflow():
    """A SavedModel from a newer TensorFlow may hold ops an older TensorFlow Serving lacks: pin the same release."""
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split() if "==" in line)
    release = pins["tensorflow"]
    assert pins["tensorflow-serving-api"] == release  # the protos the client and the embedded server speak
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    deployment = yaml.safe_load((SERVING / "kubernetes" / "deployment.yaml").read_text())
    images = [compose["services"]["tensorflow-serving"]["image"],
              *[c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]]
    assert images == [f"tensorflow/serving:{release}"] * 2
