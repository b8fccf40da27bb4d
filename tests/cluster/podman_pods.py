"""A podman "node agent" for the test cluster: a pod, as the API server holds it,
turned into the ``podman run`` that a kubelet's container runtime would amount to.

kwok plays the kubelets of the test control plane: pods are scheduled and get
loopback IPs, but nothing runs. With the images built (``make images``) a test can
run a pod's real container instead of a process of the clone's sources:

    agent = PodmanAgent(cluster.kubectl, folder, claims={"models": store})
    run = agent.start(pod, adjust=bind_to_pod_ip(pod))  # its ConfigMaps and Secrets from the API
    # or agent.serve(pod, ...): started and ready, a PodContainer (tests/cluster/fleet.py)
    ...
    assert agent.stop(run) == 0  # preStop sleep, SIGTERM, SIGKILL after the grace period

or, without an API server, ``translate(pod, Objects(...), folder)``, then
``run.materialise()`` and ``podman`` with ``run.argv`` (tests/containers does).

What is translated, and how:

* image, ``command`` (the entrypoint) and ``args`` with Kubernetes' meaning: ``command``
  replaces the image's ENTRYPOINT and drops its CMD; ``args`` replaces CMD;
  ``$(VAR)`` references to the container's environment are expanded in both;
* ``env``: plain values, downward-API ``fieldRef`` (``metadata.name``, ``.namespace``,
  ``.uid``, ``.labels['k']``, ``.annotations['k']``, ``status.podIP``, ``status.hostIP``,
  ``spec.nodeName``, ``spec.serviceAccountName``), ``configMapKeyRef`` and
  ``secretKeyRef``; ``envFrom`` ConfigMaps and Secrets;
* ``volumeMounts`` as bind mounts: a ``configMap`` or ``secret`` volume becomes a host
  folder holding its keys (or its ``items``), an ``emptyDir`` a folder the pod's user
  owns, a ``persistentVolumeClaim`` the host folder given for the claim, a
  ``hostPath`` its path; ``subPath``/``subPathExpr`` mount one file or folder of it;
  ``readOnly`` (on the mount, or a read-only claim) mounts it read-only;
* the security context (the container's over the pod's): ``runAsUser``/``runAsGroup``
  as ``--user``, ``fsGroup`` as a supplementary group, ``runAsNonRoot`` checked,
  ``readOnlyRootFilesystem`` as ``--read-only`` (with no tmpfs podman would add),
  ``capabilities``, ``allowPrivilegeEscalation: false`` as ``no-new-privileges``;
* the network: the host's (``--network=host``), hostname the pod's name. A pod
  listens on its IP when its process binds it: :func:`bind_to_pod_ip` rewrites the
  ``server.host: 0.0.0.0`` of ModelFleet's runtime and gateway documents to it (the
  test cluster's pod IPs are loopback addresses of this host);
* ``terminationGracePeriodSeconds`` and a ``preStop`` sleep, for :meth:`PodRun.stop_argv`.

Probes: :meth:`PodmanAgent.serve` starts a container and waits until its
``readinessProbe`` (``httpGet``, the port by name or number, on the pod IP) answers,
failing with :class:`PodStartError` and the log's end if the container exits first;
liveness and startup probes are not run, and the pod's Ready condition stays kwok's.
Images are never pulled (``--pull=never``): a missing one is named.

Not translated (said, not guessed): resource limits and GPUs, init and sidecar
containers, ``projected`` and ``downwardAPI`` volumes. A pod using one of those volume kinds or env sources is
refused with :class:`Untranslatable`, naming it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PODMAN_RUN = [
    "podman", "--runtime", "runc", "run",
    # runc refuses podman's default ulimits on these hosts; crun fails on their cgroups.
    "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
]  # fmt: skip
DEFAULT_GRACE_S = 30
"""Kubernetes' default terminationGracePeriodSeconds."""


READY_TIMEOUT_S = 180.0
"""How long :meth:`PodmanAgent.serve` waits for a container's readinessProbe: a
runtime container imports torch on a loaded 2-CPU machine (the operator's startupProbe
allows 5 minutes)."""


class Untranslatable(ValueError):
    """The pod uses something this agent does not run; the message names it."""


class PodStartError(AssertionError):
    """A pod's container did not start, or did not become ready: the message names
    the pod and why (its spec, its image, podman's error, or the container's log).
    An ``AssertionError``, so a test that meets it fails; it never skips."""


@dataclass(frozen=True)
class Objects:
    """The API objects a pod's volumes and env refer to, by name (its namespace's)."""

    configmaps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """ConfigMap name -> its ``data``."""
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    """Secret name -> its data, decoded."""
    claims: Mapping[str, Path] = field(default_factory=dict)
    """PersistentVolumeClaim name -> the host folder that plays its volume."""
    tokens: Mapping[str, bytes] = field(default_factory=dict)
    """Audience ("" for the API server's) -> a token of the pod's ServiceAccount, for
    ``serviceAccountToken`` sources of projected volumes (``kubectl create token``)."""
    api_server: tuple[str, int] | None = None
    """Where the pod reaches the API server: ``KUBERNETES_SERVICE_HOST`` and ``_PORT``,
    as a kubelet sets them for the ``kubernetes`` Service (here its own loopback
    address: the test cluster has no Service proxy)."""


Adjust = Callable[[str, str, str], str]
"""(volume name, key, text) -> the text to write: a hook over ConfigMap contents."""


@dataclass
class PodRun:
    """What running one container of a pod takes on this host."""

    name: str
    """The container's name in podman (``<namespace>.<pod>.<container>``)."""
    argv: list[str]
    """``podman run --detach ...`` in full."""
    image: str = ""
    """The container's image (``imagePullPolicy`` aside: the agent never pulls)."""
    files: dict[Path, bytes] = field(default_factory=dict)
    """Host files the mounts need (ConfigMap and Secret keys), with their contents."""
    folders: dict[Path, tuple[int, int] | None] = field(default_factory=dict)
    """Host folders the mounts need, with the (uid, gid) that must own them (emptyDirs)."""
    grace_s: int = DEFAULT_GRACE_S
    """terminationGracePeriodSeconds: SIGTERM, then SIGKILL this much later."""
    pre_stop_sleep_s: int = 0
    """A ``preStop: sleep`` the agent waits out before stopping the container."""

    def materialise(self) -> None:
        """Writes the volume files and folders (idempotent)."""
        for folder, owner in self.folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            if owner is not None:
                os.chown(folder, *owner)
                folder.chmod(0o777)
            else:
                folder.chmod(0o755)
        for path, content in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            path.write_bytes(content)
            path.chmod(0o644)

    def stop_argv(self) -> list[str]:
        """``podman stop``: SIGTERM, SIGKILL after the pod's grace period."""
        return ["podman", "stop", "--time", str(self.grace_s), self.name]


def translate(
    pod: Mapping[str, Any], objects: Objects, folder: Path, *, container: str = "",
    adjust: Adjust | None = None,
) -> PodRun:  # fmt: skip
    """The ``podman run`` of one container of ``pod`` (the first unless named), its
    volume files under ``folder``."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    if not status.get("podIP"):
        raise Untranslatable(f"pod {meta['name']} has no IP yet (status.podIP)")
    containers = spec["containers"]
    chosen = next((c for c in containers if c["name"] == container), None) if container else None
    if container and chosen is None:
        raise Untranslatable(f"pod {meta['name']} has no container {container!r}")
    chosen = chosen or containers[0]
    if spec.get("initContainers"):
        raise Untranslatable(f"pod {meta['name']}: init containers are not run")
    name = f"{meta.get('namespace', 'default')}.{meta['name']}.{chosen['name']}"
    run = PodRun(name=name, argv=[])
    env = _environment(pod, chosen, objects)
    if objects.api_server is not None:  # the kubelet's, before the container's own
        host, port = objects.api_server
        env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(port), **env}  # fmt: skip
    args = [*PODMAN_RUN, "--detach", "--pull=never", "--name", name, "--network=host",
            "--hostname", meta["name"], "--label", f"io.kubernetes.pod.uid={meta.get('uid', '')}"]  # fmt: skip
    args += _security(meta["name"], spec.get("securityContext") or {}, chosen)
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    owner = _owner(spec.get("securityContext") or {}, chosen)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in chosen.get("volumeMounts") or []:
        args += _mount(run, mount, volumes, objects, folder / meta["name"], env, owner, adjust, pod)
    command = [_expand(a, env) for a in chosen.get("command") or []]
    argv = [_expand(a, env) for a in chosen.get("args") or []]
    if command:
        args += ["--entrypoint", json.dumps(command[:1])]
        argv = command[1:] + argv
    run.argv = [*args, chosen["image"], *argv]
    run.image = chosen["image"]
    run.grace_s = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    sleep = ((chosen.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    run.pre_stop_sleep_s = int(sleep.get("seconds", 0))
    return run


def bind_to_pod_ip(pod: Mapping[str, Any]) -> Adjust:
    """An ``adjust`` hook: a ModelFleet runtime or gateway document (YAML with
    ``server.host: 0.0.0.0``) listens on the pod's IP instead, as it would in the
    pod's own network namespace; any other content is written as it is."""
    ip = pod["status"]["podIP"]

    def adjust(volume: str, key: str, text: str) -> str:
        if not key.endswith((".yaml", ".yml")):
            return text
        document = yaml.safe_load(text)
        server = document.get("server") if isinstance(document, dict) else None
        if not isinstance(server, dict) or server.get("host") not in ("0.0.0.0", "::"):
            return text
        server["host"] = ip
        return yaml.safe_dump(document, sort_keys=False)

    return adjust


_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def _field(pod: Mapping[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
    }  # fmt: skip
    if path in simple:
        return str(simple[path] or "")
    found = _FIELD_LABEL.match(path)
    if found:
        return str((meta.get(found.group(1)) or {}).get(found.group(2), ""))
    raise Untranslatable(f"pod {meta['name']}: fieldRef {path!r} is not supported")


def _environment(pod: Mapping[str, Any], container: Mapping[str, Any], objects: Objects) -> dict[str, str]:  # fmt: skip
    """The container's environment in Kubernetes' order: envFrom, then env (later wins),
    ``$(VAR)`` in a value expanded from the variables before it."""
    pod_name = pod["metadata"]["name"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = _lookup(
                objects.configmaps, source["configMapRef"]["name"], "ConfigMap", pod_name
            )
            env.update({prefix + k: v for k, v in data.items()})
        elif "secretRef" in source:
            secret = _lookup(objects.secrets, source["secretRef"]["name"], "Secret", pod_name)
            env.update({prefix + k: v.decode() for k, v in secret.items()})
        else:
            raise Untranslatable(f"pod {pod_name}: envFrom {source} is not supported")
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = _expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = _lookup(objects.configmaps, ref["name"], "ConfigMap", pod_name)[
                ref["key"]
            ]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = _lookup(objects.secrets, ref["name"], "Secret", pod_name)[
                ref["key"]
            ].decode()
        else:
            raise Untranslatable(
                f"pod {pod_name}: env {var['name']} from {source} is not supported"
            )
    return env


def _lookup(found: Mapping[str, Any], name: str, kind: str, pod: str) -> Any:
    if name not in found:
        raise Untranslatable(f"pod {pod}: {kind} {name!r} was not given")
    return found[name]


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, unknown
    references stay as written, ``$$`` is a literal ``$``."""

    def one(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        return env.get(found.group(1), found.group(0))

    return _REFERENCE.sub(one, text)


def _context(pod_context: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The effective security context: the container's fields over the pod's."""
    return {**pod_context, **(container.get("securityContext") or {})}


def _owner(pod_context: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, int]:
    context = _context(pod_context, container)
    uid = int(context.get("runAsUser", 0))
    return uid, int(pod_context.get("fsGroup", context.get("runAsGroup", uid)))


def _security(pod: str, pod_context: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    context = _context(pod_context, container)
    args: list[str] = []
    if "runAsUser" in context:
        user = str(context["runAsUser"])
        args += ["--user", f"{user}:{context['runAsGroup']}" if "runAsGroup" in context else user]
    if context.get("runAsNonRoot") and int(context.get("runAsUser", -1)) == 0:
        raise Untranslatable(f"pod {pod}: runAsNonRoot with runAsUser 0")
    if "fsGroup" in pod_context:
        args += ["--group-add", str(pod_context["fsGroup"])]
    for group in pod_context.get("supplementalGroups") or []:
        args += ["--group-add", str(group)]
    if context.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = context.get("capabilities") or {}
    args += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
    args += [f"--cap-add={c}" for c in capabilities.get("add") or []]
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt=no-new-privileges"]
    if context.get("privileged"):
        raise Untranslatable(f"pod {pod}: privileged containers are not run")
    return args


def _mount(
    run: PodRun, mount: Mapping[str, Any], volumes: Mapping[str, Any], objects: Objects,
    folder: Path, env: Mapping[str, str], owner: tuple[int, int], adjust: Adjust | None,
    pod: Mapping[str, Any],
) -> list[str]:  # fmt: skip
    volume = volumes.get(mount["name"])
    if volume is None:
        raise Untranslatable(f"volumeMount {mount['name']!r} names no volume of the pod")
    source, read_only = _volume_source(
        run, volume, objects, folder / mount["name"], owner, adjust, pod
    )
    read_only = read_only or bool(mount.get("readOnly"))
    sub = mount.get("subPath") or _expand(mount.get("subPathExpr", ""), env)
    if sub:
        if ".." in Path(sub).parts or Path(sub).is_absolute():
            raise Untranslatable(f"subPath {sub!r} leaves its volume")
        source = source / sub
    return ["--volume", f"{source}:{mount['mountPath']}:{'ro' if read_only else 'rw'}"]


def _projected(
    projected: Mapping[str, Any], objects: Objects, name: str, pod: Mapping[str, Any]
) -> list[tuple[str, bytes]]:
    """The files of a projected volume (the service-account token volume the API
    server adds to a pod that mounts its ServiceAccount's token, for one)."""
    files: list[tuple[str, bytes]] = []
    for source in projected.get("sources") or []:
        if "serviceAccountToken" in source:
            audience = source["serviceAccountToken"].get("audience", "")
            token = _lookup(objects.tokens, audience, "ServiceAccount token for audience", name)
            files.append((source["serviceAccountToken"]["path"], token))
        elif "configMap" in source:
            data = _lookup(objects.configmaps, source["configMap"]["name"], "ConfigMap", name)
            files += [(path, data[key].encode()) for key, path in _items(source["configMap"], data)]
        elif "secret" in source:
            secret = _lookup(objects.secrets, source["secret"]["name"], "Secret", name)
            files += [(path, secret[key]) for key, path in _items(source["secret"], secret)]
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise Untranslatable(f"volume {name!r}: downwardAPI {item} is not supported")
                files.append((item["path"], _field(pod, item["fieldRef"]["fieldPath"]).encode()))
        else:
            kinds = sorted(source)
            raise Untranslatable(f"volume {name!r}: projected {', '.join(kinds)} is not supported")
    return files


def _volume_source(
    run: PodRun, volume: Mapping[str, Any], objects: Objects, folder: Path,
    owner: tuple[int, int], adjust: Adjust | None, pod: Mapping[str, Any],
) -> tuple[Path, bool]:  # fmt: skip
    """The host folder that plays ``volume``, and whether it is read-only whatever the
    mount says (ConfigMaps and Secrets are, as in Kubernetes)."""
    name = volume["name"]
    if "configMap" in volume:
        data = _lookup(objects.configmaps, volume["configMap"]["name"], "ConfigMap", name)
        for key, path in _items(volume["configMap"], data):
            text = adjust(name, key, data[key]) if adjust else data[key]
            run.files[folder / path] = text.encode()
        run.folders.setdefault(folder, None)
        return folder, True
    if "secret" in volume:
        secret = _lookup(objects.secrets, volume["secret"]["secretName"], "Secret", name)
        for key, path in _items(volume["secret"], secret):
            run.files[folder / path] = secret[key]
        run.folders.setdefault(folder, None)
        return folder, True
    if "emptyDir" in volume:
        run.folders[folder] = owner
        return folder, False
    if "projected" in volume:
        for path, content in _projected(volume["projected"], objects, name, pod):
            run.files[folder / path] = content
        run.folders.setdefault(folder, None)
        return folder, True
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]
        path = _lookup(objects.claims, claim["claimName"], "PersistentVolumeClaim", name)
        return Path(path), bool(claim.get("readOnly"))
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"]), False
    kinds = sorted(set(volume) - {"name"})
    raise Untranslatable(f"volume {name!r}: {', '.join(kinds)} volumes are not supported")


def _items(source: Mapping[str, Any], data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, file path in the volume): every key, or the ``items`` asked for."""
    items = source.get("items")
    if not items:
        return [(key, key) for key in data]
    return [(item["key"], item["path"]) for item in items if item["key"] in data]


Kubectl = Callable[..., subprocess.CompletedProcess[str]]
"""``Cluster.kubectl``: (args..., input=, check=) -> the finished kubectl."""


class PodmanAgent:
    """Runs pods the API server holds in podman, as a kubelet would: the test says
    which pod (the test cluster's kwok has scheduled it and given it an IP), the agent
    reads the ConfigMaps and Secrets it refers to from the API and starts it; stopping
    waits out its preStop sleep, then SIGTERM, then SIGKILL after its grace period."""

    def __init__(
        self, kubectl: Kubectl, folder: Path, claims: Mapping[str, Path],
        api_server: tuple[str, int] | None = None,
    ) -> None:  # fmt: skip
        self.kubectl = kubectl
        self.folder = folder
        self.claims = dict(claims)
        """PersistentVolumeClaim name -> the host folder that plays its volume."""
        self.api_server = api_server
        """The API server's address for pods (``Objects.api_server``); None: not set."""
        self.started: list[PodRun] = []

    def objects_for(self, pod: Mapping[str, Any]) -> Objects:
        """The ConfigMaps and Secrets the pod's volumes and env name, from the API."""
        namespace = pod["metadata"].get("namespace", "default")
        configmaps, secrets = _referenced(pod)
        return Objects(
            configmaps={n: self._get("configmap", n, namespace).get("data") or {} for n in configmaps},
            secrets={
                n: {k: base64.b64decode(v) for k, v in (self._get("secret", n, namespace).get("data") or {}).items()}
                for n in secrets
            },
            claims=self.claims,
            tokens=self._tokens(pod),
            api_server=self.api_server,
        )  # fmt: skip

    def _tokens(self, pod: Mapping[str, Any]) -> dict[str, bytes]:
        """A token of the pod's ServiceAccount per audience its projected volumes ask
        for, from the API server (``kubectl create token``, as the kubelet's TokenRequest)."""
        namespace = pod["metadata"].get("namespace", "default")
        account = pod["spec"].get("serviceAccountName") or "default"
        wanted = {
            (s["serviceAccountToken"].get("audience", ""),
             int(s["serviceAccountToken"].get("expirationSeconds", 3607)))
            for v in pod["spec"].get("volumes") or []
            for s in (v.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in s
        }  # fmt: skip
        tokens: dict[str, bytes] = {}
        for audience, seconds in sorted(wanted):
            args = ["create", "token", account, "-n", namespace, f"--duration={max(seconds, 600)}s"]
            if audience:
                args.append(f"--audience={audience}")
            tokens[audience] = self.kubectl(*args).stdout.strip().encode()
        return tokens

    def start(self, pod: Mapping[str, Any], adjust: Adjust | None = None) -> PodRun:
        """Starts the pod's (first) container, detached; a container left by an
        earlier run of the same pod is removed first. A pod this agent cannot run, an
        image podman does not hold or a ``podman run`` that fails raise
        :class:`PodStartError` naming it."""
        pod_name = pod["metadata"]["name"]
        try:
            run = translate(pod, self.objects_for(pod), self.folder, adjust=adjust)
        except (Untranslatable, KeyError) as exc:
            raise PodStartError(f"pod {pod_name}: its spec cannot be run: {exc}") from exc
        if subprocess.run(["podman", "image", "exists", run.image], capture_output=True).returncode:
            raise PodStartError(
                f"pod {pod_name}: image {run.image} is not in podman's image store "
                "(`make images` builds modelfleet/runtime and modelfleet/operator)"
            )
        run.materialise()
        subprocess.run(["podman", "rm", "--force", "--time", "0", run.name], capture_output=True)
        self.started.append(run)  # removed by remove_all() even if it never ran
        done = subprocess.run(run.argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise PodStartError(
                f"pod {pod_name}: podman run of {run.name} exited {done.returncode}: "
                f"{done.stderr.strip()[-3000:]}"
            )
        return run

    def serve(
        self, pod: Mapping[str, Any], adjust: Adjust | None = None,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> PodContainer:  # fmt: skip
        """Starts the pod's container and waits until its readinessProbe passes, as the
        kubelet would before the pod counts as Ready; a container that exits first, or
        is not ready in ``timeout_s``, raises :class:`PodStartError` with its log's end."""
        run = self.start(pod, adjust)
        served = PodContainer(self, run, pod)
        served.wait_ready(timeout_s)
        return served

    def stop(self, run: PodRun, *, pre_stop: bool = True) -> int:
        """Stops the container as the kubelet deletes a pod; returns its exit code."""
        if pre_stop and run.pre_stop_sleep_s:
            time.sleep(run.pre_stop_sleep_s)
        subprocess.run(run.stop_argv(), capture_output=True, timeout=run.grace_s + 30)
        code = subprocess.run(
            ["podman", "container", "inspect", "--format", "{{.State.ExitCode}}", run.name],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return int(code.stdout.strip() or -1)

    def logs(self, run: PodRun) -> str:
        done = subprocess.run(["podman", "logs", run.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def remove_all(self) -> None:
        for run in self.started:
            subprocess.run(
                ["podman", "rm", "--force", "--time", "0", run.name], capture_output=True
            )
        self.started.clear()

    def _get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        done = self.kubectl("get", kind, name, "-n", namespace, "-o", "json")
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def _referenced(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The names of the ConfigMaps and of the Secrets a pod's volumes and env use."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    for volume in pod["spec"].get("volumes") or []:
        if "configMap" in volume:
            configmaps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                configmaps.add(source["configMap"]["name"])
            if "secret" in source:
                secrets.add(source["secret"]["name"])
    for container in pod["spec"]["containers"]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                configmaps.add(source["configMapRef"]["name"])
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                configmaps.add(source["configMapKeyRef"]["name"])
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"]["name"])
    return configmaps, secrets


def container_of(pod: Mapping[str, Any], name: str = "") -> Mapping[str, Any]:
    """The pod's container called ``name`` (its first when no name is given)."""
    containers = pod["spec"]["containers"]
    return next((c for c in containers if c["name"] == name), containers[0])


def container_port(container: Mapping[str, Any], port: int | str) -> int | None:
    """A port number, or the ``containerPort`` of the port with that name."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    named = (p for p in container.get("ports") or [] if p.get("name") == port)
    return next((int(p["containerPort"]) for p in named), None)


def readiness_url(pod: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """The URL the kubelet's readinessProbe would GET (``httpGet`` probes only; the
    host is the pod's IP unless the probe names one)."""
    name = pod["metadata"]["name"]
    probe = container.get("readinessProbe")
    if not probe:
        raise PodStartError(f"pod {name}: container {container['name']} has no readinessProbe")
    get = probe.get("httpGet")
    if not get:
        kinds = sorted(set(probe) & {"exec", "tcpSocket", "grpc"})
        raise PodStartError(f"pod {name}: readinessProbe {kinds} is not run, only httpGet")
    port = container_port(container, get["port"])
    if port is None:
        raise PodStartError(
            f"pod {name}: readinessProbe port {get['port']!r} names no port of {container['name']}"
        )
    host = get.get("host") or pod["status"]["podIP"]
    return f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"


class PodContainer:
    """A pod's container running in podman, offering what the cluster tests use of a
    host process (tests/support/servers.py ``Process``): ``host``, ``url``, ``port``,
    ``admin_url``, ``grpc_address``, ``ready()``, ``stop()``, ``kill()``, ``log_tail()``.
    The ports are the container's named ports ``http``, ``admin`` and ``grpc``."""

    def __init__(self, agent: PodmanAgent, run: PodRun, pod: Mapping[str, Any]) -> None:
        self.agent, self.run = agent, run
        self.pod_name = pod["metadata"]["name"]
        container = container_of(pod, run.name.rsplit(".", 1)[-1])
        self.host = str(pod["status"]["podIP"])
        self.port = container_port(container, "http") or 8080
        self.url = f"http://{self.host}:{self.port}"
        admin = container_port(container, "admin")
        self.admin_url = f"http://{self.host}:{admin}" if admin else None
        grpc = container_port(container, "grpc")
        self.grpc_address = f"{self.host}:{grpc}" if grpc else None
        self.probe = readiness_url(pod, container)
        probe = container.get("readinessProbe") or {}
        self.probe_timeout_s = float(probe.get("timeoutSeconds", 1))

    def ready(self) -> bool:
        """One readinessProbe: the probe's GET answers 200-399 within its timeout."""
        try:
            with urllib.request.urlopen(self.probe, timeout=self.probe_timeout_s) as resp:
                return 200 <= int(resp.status) < 400
        except (OSError, urllib.error.HTTPError):
            return False

    def state(self) -> tuple[str, int]:
        """podman's view: (status such as ``running`` or ``exited``, exit code)."""
        done = subprocess.run(
            ["podman", "container", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
             self.run.name], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        status, _, code = done.stdout.strip().partition(" ")
        return (status or "missing"), int(code or -1)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            status, code = self.state()
            if status in ("exited", "stopped"):
                why = f"exited with {code}"
            elif status in ("missing", "removing", "paused"):
                why = f"is {status}"
            elif time.monotonic() > deadline:
                why = f"not ready after {timeout_s:.0f} s ({self.probe} does not answer 200)"
            else:
                time.sleep(0.25)
                continue
            tail = self.log_tail()
            self.kill()
            raise PodStartError(
                f"pod {self.pod_name}: container {self.run.name} {why}; its log ends:\n{tail}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        return self.agent.logs(self.run)[-chars:]

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (the runtime drains), SIGKILL after ``timeout_s``; the exit code.
        No preStop sleep: a test's stop is the container's, not the pod's deletion."""
        subprocess.run(["podman", "stop", "--time", str(int(timeout_s)), self.run.name],
                       capture_output=True, timeout=timeout_s + 60)  # fmt: skip
        return self.state()[1]

    def kill(self) -> None:
        """SIGKILL at once: the container vanishes as a crashed pod's would."""
        subprocess.run(["podman", "kill", "--signal", "KILL", self.run.name],
                       capture_output=True, timeout=60)  # fmt: skip
        subprocess.run(["podman", "wait", self.run.name], capture_output=True, timeout=60)
