"""Cluster launcher configs: Ray's own validation, resources vs the sweep, security, and a fake autoscaling run."""
from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from npsemiseg.tune.resources import DEFAULT_GPU_TRIAL_RESOURCES, TRIAL_DRIVER_CPU, TrialResources

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
RAY_PORTS = {"dashboard": 8265, "ray client": 10001, "gcs": 6379}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _workers(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _fits(request: dict[str, float], offer: dict[str, float]) -> bool:
    return all(offer.get(k, 0) >= v for k, v in request.items())


# ----------------------------------------------------------------------------- Ray's own validation

@pytest.mark.parametrize("name", ["gpu.yaml", "local.yaml"])
def test_configs_pass_rays_own_validation(name: str):
    """The same steps `ray up` runs before touching a provider: prepare_config (defaults, docker, node types)
    and validate_config (the bundled ray-schema.json plus its cross-field checks)."""
    prepared = prepare_config(_load(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_setup_installs_project_and_autoscaler_deps():
    prepared = prepare_config(_load("gpu.yaml"))
    mount = next(k for k, v in prepared["file_mounts"].items() if v == ".")  # the repo, synced from `ray up`'s cwd
    assert any("pip install" in c and mount in c for c in prepared["setup_commands"])
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the head's autoscaler drives EC2
    assert any("aws s3 sync" in c for c in prepared["setup_commands"])  # dataset sync on every node


def test_fake_config_passes_rays_schema():
    """The fake provider's defaults file is not shipped in the 2.60 wheel, so prepare_config cannot run on it;
    the file is complete on its own and goes straight through validate_config."""
    validate_config(_load("fake_local.yaml"))


def test_validator_is_not_a_rubber_stamp():
    bad = _load("gpu.yaml")
    bad["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5  # schema: integer resources only
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = _load("gpu.yaml")
    bad["provider"]["security_group"] = {"GroupName": "x", "Ports": [8265]}  # unknown key in the group object
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# ----------------------------------------------------------------------------- image, scaling, resources

def test_image_tag_matches_installed_ray():
    cfg = _load("gpu.yaml")
    image = cfg["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert m, f"unexpected image {image!r}"
    assert m.group(1) == ray.__version__
    assert (int(m.group(2)), int(m.group(3))) >= (3, 10)  # the package needs Python >= 3.10
    assert _load("local.yaml")["docker"]["image"] == image


def test_autoscaling_shape():
    cfg = _load("gpu.yaml")
    workers = _workers(cfg)
    assert len(workers) >= 2 and cfg["idle_timeout_minutes"] > 0
    gpus = sorted(w["resources"]["GPU"] for w in workers.values())
    assert gpus[0] == 1 and gpus[-1] >= 4  # a 1-GPU and a multi-GPU type
    for name, w in workers.items():
        assert w["min_workers"] == 0, name  # nothing runs (or bills) until a trial asks for it
        assert 0 < w["max_workers"] <= cfg["max_workers"], name
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # GPU requests must scale GPU workers, never land on the head
    assert head["resources"]["CPU"] >= 1 > TRIAL_DRIVER_CPU  # room for the trial driver functions


def test_worker_types_offer_what_the_sweep_requests():
    workers = _workers(_load("gpu.yaml"))
    offers = {k: v["resources"] for k, v in workers.items()}
    assert any(_fits(DEFAULT_GPU_TRIAL_RESOURCES, o) for o in offers.values()), offers
    # per-worker bundles of typical sweep settings must fit on one node; a whole multi-GPU trial on one node
    for res in (TrialResources(1, 8.0, 1.0), TrialResources(4, 8.0, 4.0), TrialResources(1, 2.0, 0.25)):
        assert any(_fits(res.per_worker(), o) for o in offers.values()), res.describe()
        whole = {k: v * res.workers for k, v in res.per_worker().items()}
        assert any(_fits(whole, o) for o in offers.values()), res.describe()


def test_fake_cluster_mirrors_gpu_yaml():
    gpu, fake = _load("gpu.yaml"), _load("fake_local.yaml")
    strip = ("node_config",)
    assert {k: {f: v for f, v in w.items() if f not in strip} for k, w in _workers(gpu).items()} == {
        k: {f: v for f, v in w.items() if f not in strip} for k, w in _workers(fake).items()
    }
    assert (gpu["available_node_types"][gpu["head_node_type"]]["resources"]
            == fake["available_node_types"][fake["head_node_type"]]["resources"])
    assert fake["head_node_type"] == "ray.head.default"  # the fake provider's fixed head type name


# ----------------------------------------------------------------------------- security

class _AwsSdkStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets Ray's AWS module import without boto3 (only its pure rule-building functions are called)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("boto3", "botocore"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock()
        module.__path__, module.__spec__, module.__version__ = [], spec, "99.0.0"
        return module

    def exec_module(self, module):
        return None


def _rules_ray_would_authorise(cfg: dict) -> list[dict]:
    """Inbound rules Ray's AWS bootstrap puts on the cluster's security group: its defaults (intra-cluster, SSH)
    plus the config's IpPermissions, built by Ray's own function."""
    extra = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    with mock.patch.dict(sys.modules), mock.patch.object(sys, "meta_path", [_AwsSdkStub(), *sys.meta_path]):
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules

        return _create_default_inbound_rules({"sg-cluster"}, copy.deepcopy(extra))


def _public_port_ranges(rules: list[dict]) -> list[tuple[int, int, str]]:
    """(from, to, protocol) of every rule open to the whole internet (0.0.0.0/0 or ::/0)."""
    out = []
    for r in rules:
        cidrs = [x["CidrIp"] for x in r.get("IpRanges", [])] + [x["CidrIpv6"] for x in r.get("Ipv6Ranges", [])]
        if not any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs):
            continue
        all_ports = r["IpProtocol"] == "-1" or r.get("FromPort", -1) == -1
        out.append((0, 65535, r["IpProtocol"]) if all_ports else (r["FromPort"], r["ToPort"], r["IpProtocol"]))
    return out


AWS = CLUSTER / "aws"


def _walk_strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _walk_strings(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _walk_strings(v)]
    return [obj] if isinstance(obj, str) else []


def _group_rules(cidr: str) -> list[dict]:
    text = (AWS / "security_group_rules.json").read_text()
    return json.loads(text.replace("YOUR_SSH_CIDR", cidr).replace("THIS_GROUP_ID", "sg-cluster"))


def test_every_node_uses_the_users_ssh_only_group():
    """Ray's own group would get SSH from 0.0.0.0/0 (its default rule, built by its own code below); every node
    type must name the group made from the user's CIDR instead, and nothing in the file opens to the world."""
    cfg = _load("gpu.yaml")
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"].get("SecurityGroupIds") == ["sg-REPLACE-ME"], name
    assert "security_group" not in cfg["provider"]
    assert not [v for v in _walk_strings(cfg) if "0.0.0.0/0" in v or "::/0" in v]
    assert _public_port_ranges(_rules_ray_would_authorise({"provider": {}})) == [(22, 22, "tcp")]  # why


def test_group_rules_open_nothing_to_the_internet():
    rules = _group_rules("203.0.113.7/32")
    assert _public_port_ranges(rules) == []
    ssh = [r for r in rules if r.get("IpRanges")]
    assert ssh == [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [
        {"CidrIp": "203.0.113.7/32", "Description": ssh[0]["IpRanges"][0]["Description"]}]}]
    assert [r["UserIdGroupPairs"] for r in rules if r.get("UserIdGroupPairs")] == [
        [{"GroupId": "sg-cluster", "Description": "cluster-internal"}]]
    # the detector would see the world-open variant
    assert _public_port_ranges(_group_rules("0.0.0.0/0")) == [(22, 22, "tcp")]


@pytest.mark.parametrize("cidr", ["", "0.0.0.0/0", "10.0.0.0/4", "not-a-cidr"])
def test_group_script_refuses_a_missing_or_world_cidr(cidr: str):
    out = subprocess.run(["bash", str(AWS / "ssh_security_group.sh"), cidr], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=30)  # no aws CLI on PATH: it must stop before
    assert out.returncode == 2 and out.stderr.strip(), out


def test_workers_get_a_role_limited_to_the_sweep_bucket():
    cfg = _load("gpu.yaml")
    for name, w in _workers(cfg).items():
        assert w["node_config"]["IamInstanceProfile"] == {"Name": "npsemiseg-worker"}, name
    policy = json.loads((AWS / "worker_policy.json").read_text())
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert all(r in ("arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*") for r in res), res
    script = (AWS / "worker_role.sh").read_text()
    assert "worker_policy.json" in script and "iam:PassRole" in script and "npsemiseg-worker" in script


def test_weights_are_on_every_node_before_a_trial():
    """setup_commands run on every node before Ray starts there: after the package is installed they fetch the
    weights from the sweep's bucket into torch's hub cache, where the trials and the preflight look."""
    prepared = prepare_config(_load("gpu.yaml"))
    cmds = prepared["setup_commands"]
    pip = next(i for i, c in enumerate(cmds) if "pip install" in c)
    fetch = [i for i, c in enumerate(cmds) if "npsemiseg fetch-weights" in c]
    assert fetch and fetch[0] > pip
    args = cmds[fetch[0]].split()
    src, out = args[args.index("--from") + 1], args[args.index("--out") + 1]
    assert src.startswith("s3://YOUR-BUCKET/") and out == "/home/ray/.cache/torch/hub/checkpoints"
    # that folder is the one the package searches on a node (torch's default hub dir under the container's HOME)
    with mock.patch.dict(os.environ, {"HOME": "/home/ray"}, clear=False):
        os.environ.pop("TORCH_HOME", None)
        os.environ.pop("XDG_CACHE_HOME", None)
        os.environ.pop("NPSEMISEG_WEIGHTS_DIR", None)
        import torch

        from npsemiseg.models.weights import weight_dirs

        with mock.patch.object(torch.hub, "_hub_dir", None):
            assert str(weight_dirs()[-1]) == out
    for kind in ("head_setup_commands", "worker_setup_commands"):  # head too: the preflight looks there
        assert any("npsemiseg fetch-weights" in c for c in prepared[kind]), kind


def test_prebuilt_image_matches_the_cluster():
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines() if ln.strip()]
    base = next(ln.split()[1] for ln in lines if ln.startswith("FROM "))
    assert base == _load("gpu.yaml")["docker"]["image"]
    body = " ".join(ln for ln in lines if not ln.startswith("#"))
    assert "pip install" in body and "npsemiseg fetch-weights --out /home/ray/.cache/torch/hub/checkpoints" in body
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and ".venv" in ignore


def test_public_rule_detector_catches_an_open_dashboard():
    cfg = _load("gpu.yaml")
    cfg["provider"]["security_group"] = {"GroupName": "x"}
    cfg["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/16"}]},  # private
    ]
    public = _public_port_ranges(_rules_ray_would_authorise(cfg))
    assert sorted(public) == [(0, 65535, "-1"), (22, 22, "tcp"), (8000, 9000, "tcp")]


def test_no_credentials_in_cluster_files():
    secret = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|BEGIN [A-Z ]*PRIVATE KEY", re.I)
    for path in CLUSTER.glob("*.yaml"):
        assert not secret.search(path.read_text()), path.name


# ----------------------------------------------------------------------------- fake autoscaling cluster

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _kill_tree(root_pid: int, extra_marker: str) -> None:
    """End the processes this test started: the `ray start --block` process, its descendants (GCS, raylets,
    dashboard, autoscaler and the fake nodes it launched), and anything else whose command line names our
    private temp dir. All by PID; nothing else on the machine is touched (no `ray stop`)."""
    import psutil  # ships with Ray (ray/thirdparty_files), importable once ray is imported

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(extra_marker in a for a in (p.info["cmdline"] or [])) and p.pid not in {q.pid for q in procs}:
            procs.append(p)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


CLIENT = textwrap.dedent(
    """
    import json, time, ray
    ray.init(log_to_driver=False)   # RAY_ADDRESS points at the fake cluster
    before = [n for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus={cpu}, num_gpus={gpu})
    def where():
        return ray.get_runtime_context().get_node_id()

    t0 = time.time()
    node_id = ray.get(where.remote(), timeout=75)
    after = [n for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({{
        "before": [n["Resources"] for n in before], "after": {{n["NodeID"]: n["Resources"] for n in after}},
        "ran_on": node_id, "wait_s": time.time() - t0}}))
    """
)


@pytest.mark.slow
def test_fake_cluster_adds_gpu_node_on_demand():
    """Head (4 CPU, 0 GPU) + the autoscaler from cluster/fake_local.yaml; a task shaped like one default GPU trial
    (8 CPU + 1 GPU) cannot run on the head, so the autoscaler must add a gpu_1x node and the task runs there."""
    from ray._private.services import get_node_ip_address

    temp_dir = tempfile.mkdtemp(prefix="npfc_", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ip, port = get_node_ip_address(), _free_port()
    cfg = _load("fake_local.yaml")
    cfg["provider"]["gcs_address"] = f"{ip}:{port}"  # fake nodes join our GCS, not the default port
    cfg_path = Path(temp_dir) / "autoscaler.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    head = cfg["available_node_types"]["ray.head.default"]["resources"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # token auth with a private token for this cluster only (Ray 2.60 would otherwise pick ~/.ray/auth_token up
    # on the server side but not in the client); every process, fake nodes included, inherits it
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin, "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}",
        f"--num-cpus={head['CPU']}", f"--num-gpus={head.get('GPU', 0)}", f"--autoscaling-config={cfg_path}",
        # no dashboard: the autoscaler talks to the GCS, and ~10 fewer processes keep this fast on 2 cores
        "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client_env = dict(env, RAY_ADDRESS=f"{ip}:{port}")
        client_env.pop("RAY_FAKE_CLUSTER")
        trial = DEFAULT_GPU_TRIAL_RESOURCES
        out = subprocess.run(
            [sys.executable, "-c", CLIENT.format(cpu=trial["CPU"], gpu=trial["GPU"])],
            env=client_env, capture_output=True, text=True, timeout=150,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"client failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        res = json.loads(lines[-1][len("RESULT "):])
        assert len(res["before"]) == 1 and res["before"][0].get("GPU", 0) == 0
        assert len(res["after"]) == 2
        added = res["after"][res["ran_on"]]
        assert res["ran_on"] != "f" * 51 + "00000"  # not the fake head
        assert added["GPU"] == 1 and added["CPU"] == _load("gpu.yaml")["available_node_types"]["gpu_1x"][
            "resources"]["CPU"]  # the smallest type that fits the trial was chosen
        # `ray start` recorded its address in our temp dir, not in /tmp/ray (shared by every other Ray user)
        assert (Path(temp_dir) / "ray_current_cluster").read_text().strip() == f"{ip}:{port}"
    finally:
        _kill_tree(proc.pid, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
