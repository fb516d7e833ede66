"""Checks deploy/ without a Kubernetes cluster (run by deploy/validate, which makes the venv).

1. Renders deploy/k8s with `kubectl kustomize` when kubectl is installed, otherwise with the
   small renderer below (resources, labels, images: the only kustomization fields used here;
   any other field is refused rather than ignored).
2. Validates every rendered object against the Kubernetes OpenAPI schemas bundled in the
   kubernetes-validate package, strictly (unknown fields are errors), for several versions.
3. Cross-checks what schemas cannot: selectors match the pod labels, the StatefulSet names
   the headless Service, probes and Services use declared ports, each pod (up to 5) has its
   node file with id = ordinal + 1 and the peer list, mounted ConfigMaps exist.
4. Parses the compose files: every node has a healthcheck-capable image, a restart policy,
   its own named volume, an id, and the same initial members as its peers.

Prints what it checked; exits 1 on the first class of failures with every problem listed.
"""

import os
import shutil
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.join(ROOT, "k8s")
COMPOSE = os.path.join(ROOT, "compose")
VERSIONS = ["1.29.0", "1.33.0", "1.37.0"]
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "labels", "resources", "images"}

problems = []


def problem(text):
    problems.append(text)


def render_with_python(directory):
    """Renders the subset of kustomize this directory uses."""
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        sys.exit(f"kustomization fields {sorted(unknown)} are not supported by this renderer; install kubectl")
    objects = []
    for resource in k.get("resources", []):
        path = os.path.join(directory, resource)
        if os.path.isdir(path):
            objects += render_with_python(path)
            continue
        with open(path) as f:
            objects += [d for d in yaml.safe_load_all(f) if d]
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            sys.exit("labels with includeSelectors/includeTemplates are not supported by this renderer")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    images = {i["name"]: i for i in k.get("images", [])}

    def retag(container):
        name = container["image"].split(":")[0]
        if name in images:
            i = images[name]
            container["image"] = f"{i.get('newName', name)}:{i['newTag']}"

    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            retag(c)
    return objects


def render(directory):
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", directory], check=True, capture_output=True, text=True)
        return "kubectl kustomize", [d for d in yaml.safe_load_all(out.stdout) if d]
    return "the Python renderer of deploy/validate.py", render_with_python(directory)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def named(objects, kind, name):
    for o in by_kind(objects, kind):
        if o["metadata"]["name"] == name:
            return o
    return None


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cross_check(objects):
    sts_list = by_kind(objects, "StatefulSet")
    if len(sts_list) != 1:
        problem(f"expected one StatefulSet, found {len(sts_list)}")
        return
    sts = sts_list[0]
    spec = sts["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    if not matches(spec["selector"]["matchLabels"], labels):
        problem("the StatefulSet selector does not match its pod labels")
    if spec.get("podManagementPolicy") != "Parallel":
        problem("podManagementPolicy must be Parallel (a quorum must start together)")
    headless = named(objects, "Service", spec["serviceName"])
    if not headless or headless["spec"].get("clusterIP") != "None":
        problem(f"serviceName {spec['serviceName']} is not a headless Service")
    elif not headless["spec"].get("publishNotReadyAddresses"):
        problem("the headless Service must publish not-ready addresses (peers find each other before ready)")
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for svc in by_kind(objects, "Service"):
        if not matches(svc["spec"]["selector"], labels):
            problem(f"Service {svc['metadata']['name']} selects no node pod")
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
                problem(f"Service {svc['metadata']['name']} targets undeclared port {p.get('targetPort')}")
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        if not matches(pdb["spec"]["selector"]["matchLabels"], labels):
            problem("the PodDisruptionBudget selects no node pod")
    if not by_kind(objects, "PodDisruptionBudget"):
        problem("no PodDisruptionBudget")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            problem(f"the node container has no {probe}")
    anti = pod["spec"].get("affinity", {}).get("podAntiAffinity", {})
    if not anti:
        problem("no pod anti-affinity")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    if "data" not in claims or mounts.get("data") != "/var/lib/lockstep":
        problem("the data volume claim is not mounted at /var/lib/lockstep")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for name in mounts:
        if name not in volumes and name not in claims:
            problem(f"volume mount {name} has no volume")
    for v in volumes.values():
        if "configMap" in v and not named(objects, "ConfigMap", v["configMap"]["name"]):
            problem(f"volume {v['name']} names missing ConfigMap {v['configMap']['name']}")
    for source in container.get("envFrom", []):
        if "configMapRef" in source and not named(objects, "ConfigMap", source["configMapRef"]["name"]):
            problem(f"envFrom names missing ConfigMap {source['configMapRef']['name']}")
    # Node files: one per pod up to 5, id = ordinal + 1, members of the same cluster.
    config_volume = next((v for v in volumes.values() if "configMap" in v and mounts.get(v["name"]) == "/etc/lockstep/config"), None)
    if not config_volume:
        problem("no ConfigMap mounted at /etc/lockstep/config")
        return
    nodes = named(objects, "ConfigMap", config_volume["configMap"]["name"])["data"]
    first_three = None
    for ordinal in range(max(5, spec["replicas"])):
        text = nodes.get(f"lockstep-{ordinal}.toml")
        if text is None:
            problem(f"no node file lockstep-{ordinal}.toml")
            continue
        node = tomllib.loads(text)
        if node.get("id") != ordinal + 1:
            problem(f"lockstep-{ordinal}.toml: id {node.get('id')}, want {ordinal + 1}")
        members = dict(m.split("=", 1) for m in node["initial_members"].split(","))
        if members.get(str(ordinal + 1)) != node.get("advertise"):
            problem(f"lockstep-{ordinal}.toml: its advertise address is not its member address")
        if not node.get("advertise", "").startswith(f"lockstep-{ordinal}.{spec['serviceName']}:"):
            problem(f"lockstep-{ordinal}.toml: advertise is not its pod DNS name")
        if ordinal < 3:
            first_three = first_three or node["initial_members"]
            if node["initial_members"] != first_three:
                problem(f"lockstep-{ordinal}.toml: initial members differ from lockstep-0's")
        elif min(int(i) for i in members) == ordinal + 1:
            problem(f"lockstep-{ordinal}.toml would bootstrap a cluster of its own")


def check_compose():
    files = sorted(f for f in os.listdir(COMPOSE) if f.endswith(".yml"))
    checked = []
    for name in files:
        with open(os.path.join(COMPOSE, name)) as f:
            doc = yaml.safe_load(f)
        services = doc.get("services", {})
        nodes = {k: v for k, v in services.items() if k.startswith("lockstep-") and k[9:].isdigit()}
        members = set()
        for service, s in nodes.items():
            env = s.get("environment", {})
            if not isinstance(env, dict):
                problem(f"{name}: {service}: environment must be a mapping")
                continue
            if str(env.get("LOCKSTEP_ID")) != service[9:]:
                problem(f"{name}: {service}: LOCKSTEP_ID is not {service[9:]}")
            members.add(env.get("LOCKSTEP_INITIAL_MEMBERS"))
            if s.get("restart") not in ("unless-stopped", "always", "on-failure"):
                problem(f"{name}: {service}: no restart policy")
            vols = [v for v in s.get("volumes", []) if isinstance(v, str) and v.endswith(":/var/lib/lockstep")]
            if len(vols) != 1:
                problem(f"{name}: {service}: no named volume at /var/lib/lockstep")
            elif vols[0].split(":")[0] not in (doc.get("volumes") or {}):
                problem(f"{name}: {service}: volume {vols[0].split(':')[0]} is not declared")
        if len(members) > 1:
            problem(f"{name}: the nodes disagree on LOCKSTEP_INITIAL_MEMBERS")
        checked.append(f"{name} ({len(nodes)} nodes)")
    return checked


def main():
    how, objects = render(K8S)
    print(f"rendered deploy/k8s with {how}: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))
    for version in VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(f"{obj['kind']}/{obj['metadata']['name']} against Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(f"{obj['kind']}/{obj['metadata']['name']}: no schema in Kubernetes {version}: {e}")
    print(f"schema-checked {len(objects)} objects strictly against Kubernetes {', '.join(VERSIONS)}")
    cross_check(objects)
    print("cross-checked selectors, ports, probes, volumes, anti-affinity and the per-pod node files")
    print("parsed compose files: " + ", ".join(check_compose()))
    if problems:
        print("\nPROBLEMS:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
