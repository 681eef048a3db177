"""cluster/ and jobs/ configs, validated offline with the schemas their tools use.

- Launcher YAML: Ray's own `prepare_config` (defaults of the provider) + `validate_config`
  (`ray/autoscaler/ray-schema.json`), as `ray up` does before it touches a cloud API.
- KubeRay manifests: the `openAPIV3Schema` of the KubeRay v1.7.0 CRDs (/work/shared/reference,
  or `MMRLHF_KUBERAY_CRDS`), with every object that lists its properties and does not carry
  `x-kubernetes-preserve-unknown-fields` closed, so a misspelt field fails here instead of
  being dropped by the API server.
- Serve configs (`serve deploy` file, RayService `serveConfigV2`): `ServeDeploySchema`, field
  names checked against Serve's models (Serve itself accepts unknown keys for compatibility),
  and the application built from its import path with its `args`.
A deliberately broken copy of each is rejected.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._common.utils import import_attr
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from mmrlhf.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = [ROOT / "cluster" / "aws.yaml", ROOT / "cluster" / "gcp.yaml"]
KUBERAY = ROOT / "cluster" / "kuberay"
CRDS = Path(os.environ.get("MMRLHF_KUBERAY_CRDS", "/work/shared/reference/kuberay-crds"))
GPU_JOB = ROOT / "jobs" / "llava_7b_gpu.yaml"
ROLES = {"learner": "mmrlhf_learner", "rollout": "mmrlhf_rollout", "reward": "mmrlhf_reward"}


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# ---------------------------------------------------------------- Ray cluster launcher


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_validation(path):
    validate_config(prepare_config(_load(path)))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_with_a_misspelt_field_is_rejected(path):
    broken = _load(path)
    broken["available_node_types"]["rollout"]["min_worker"] = broken["available_node_types"]["rollout"].pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_node_types_place_each_actor_kind_and_the_head_runs_none(path):
    config, job = _load(path), load_config(GPU_JOB)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    for role, resource in ROLES.items():
        assert getattr(job.resources, f"{role}_resource") == resource
        assert [name for name, t in types.items() if resource in t["resources"]] == [role]
        assert types[role]["resources"]["GPU"] >= 1
    rollout = types["rollout"]["node_config"]
    assert rollout.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or rollout["scheduling"]["preemptible"]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_starts_ray_with_token_auth_and_a_loopback_dashboard(path):
    config = _load(path)
    head, workers = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address" in workers
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# ---------------------------------------------------------------- KubeRay


def _closed(schema):
    """A copy of an openAPIV3Schema in which objects with listed properties allow no others."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (set MMRLHF_KUBERAY_CRDS)")
    crd = _load(CRDS / f"crd_{kind.lower()}s.yaml")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_closed(version["schema"]["openAPIV3Schema"]))


MANIFESTS = {"RayCluster": KUBERAY / "raycluster.yaml", "RayJob": KUBERAY / "rayjob.yaml",
             "RayService": KUBERAY / "rayservice.yaml"}


def _cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


@pytest.mark.parametrize("kind", MANIFESTS)
def test_kuberay_manifest_matches_the_v1_7_crd_with_closed_objects(kind):
    manifest = _load(MANIFESTS[kind])
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", kind)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator(kind).iter_errors(manifest)]
    assert not errors


@pytest.mark.parametrize("kind", MANIFESTS)
def test_kuberay_manifest_with_a_misspelt_field_is_rejected(kind):
    broken = _load(MANIFESTS[kind])
    spec = _cluster_spec(broken)
    spec["enableInTreeAutoscaler"] = spec.pop("enableInTreeAutoscaling")
    messages = [e.message for e in _crd_validator(kind).iter_errors(broken)]
    assert any("'enableInTreeAutoscaler' was unexpected" in m for m in messages)


@pytest.mark.parametrize("kind", MANIFESTS)
def test_kuberay_cluster_autoscales_with_token_auth_and_an_idle_head(kind):
    spec = _cluster_spec(_load(MANIFESTS[kind]))
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    for group in spec["workerGroupSpecs"]:
        assert group["resources"] == {ROLES[group["groupName"]]: group["resources"][ROLES[group["groupName"]]]}


def test_rayjob_runs_on_the_same_cluster_spec_as_the_raycluster():
    assert _load(MANIFESTS["RayJob"])["spec"]["rayClusterSpec"] == _load(MANIFESTS["RayCluster"])["spec"]


# ---------------------------------------------------------------- Serve configs

SERVE_CONFIGS = {
    "serve_reward.yaml": lambda: _load(ROOT / "cluster" / "serve_reward.yaml"),
    "rayservice.serveConfigV2": lambda: yaml.safe_load(_load(MANIFESTS["RayService"])["spec"]["serveConfigV2"]),
}


def _check_serve_config(config: dict) -> list[Application]:
    """Validate like `serve deploy` and build each application; returns the built applications."""
    ServeDeploySchema.model_validate(config)
    apps = []
    for app in config["applications"]:
        unknown = set(app) - set(ServeApplicationSchema.model_fields)
        unknown |= {k for d in app.get("deployments", []) for k in d if k not in DeploymentSchema.model_fields}
        assert not unknown, f"application {app['name']}: fields Serve does not know: {sorted(unknown)}"
        apps.append(call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app.get("args", {})))
    return apps


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_passes_serves_schema_and_its_app_builds(name):
    (app,) = _check_serve_config(SERVE_CONFIGS[name]())
    assert isinstance(app, Application)


@pytest.mark.parametrize("name", SERVE_CONFIGS)
@pytest.mark.parametrize("breakage, error", [
    (lambda c: c["applications"][0].pop("import_path"), "import_path"),
    (lambda c: c.update(proxy_location="Everywhere"), "proxy_location"),
    (lambda c: c["applications"][0]["args"].update(weights_dri="/x"), "weights_dri"),
    (lambda c: c["applications"][0]["deployments"][0].update(max_ongoing_request=8), "max_ongoing_request"),
], ids=["no-import-path", "bad-proxy-location", "misspelt-arg", "misspelt-deployment-field"])
def test_broken_serve_config_is_rejected(name, breakage, error):
    broken = copy.deepcopy(SERVE_CONFIGS[name]())
    breakage(broken)
    with pytest.raises((ValueError, AssertionError), match=error):
        _check_serve_config(broken)


def test_serve_deploy_file_keeps_http_off_and_rayservice_turns_it_on_for_the_cluster_only():
    deploy, service = (SERVE_CONFIGS[n]() for n in SERVE_CONFIGS)
    assert deploy["proxy_location"] == "Disabled" and deploy["applications"][0]["route_prefix"] is None
    assert service["applications"][0]["route_prefix"] == "/reward"
    assert _load(MANIFESTS["RayService"]).get("spec", {}).get("serveService") is None  # KubeRay's ClusterIP default
