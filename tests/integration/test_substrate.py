"""The test substrate is real: a kube-apiserver that serves CRDs, watches, subresources and RBAC as a
cluster does, the real kubectl, and a real redis-server. Every other integration test builds on these."""

from __future__ import annotations

import asyncio
import json
import queue
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.k8s_cluster import ADMIN_TOKEN, USER_NAME, LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GROUP = "substrate.test.local"
VERSION = "v1"
PLURAL = "widgets"
KIND = "Widget"
SHORT_NAME = "wdg"
CRD_NAME = f"{PLURAL}.{GROUP}"
TIMEOUT = 10  # seconds, for every single API request

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "widget",
            "kind": KIND,
            "listKind": f"{KIND}List",
            "shortNames": [SHORT_NAME],
            "categories": ["substrate"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {
                        "name": "Observed",
                        "type": "integer",
                        "jsonPath": ".status.observedGeneration",
                        "priority": 1,
                    },
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "color": {"type": "string", "enum": ["red", "green", "blue"]},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observedGeneration": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def crd_conditions(ext: client.ApiextensionsV1Api) -> dict[str, str]:
    crd = ext.read_custom_resource_definition(CRD_NAME, _request_timeout=TIMEOUT)
    return {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}


@pytest.fixture(scope="module")
def widget_crd(admin_api: client.ApiClient) -> Iterator[str]:
    """The Widget CRD, created and Established; deleted after this module's tests."""
    ext = client.ApiextensionsV1Api(admin_api)
    ext.create_custom_resource_definition(
        client.V1CustomResourceDefinition.model_validate(WIDGET_CRD), _request_timeout=TIMEOUT
    )
    try:
        wait_for("the Widget CRD to be Established", lambda: crd_conditions(ext).get("Established") == "True")
        yield CRD_NAME
    finally:
        ext.delete_custom_resource_definition(CRD_NAME, _request_timeout=TIMEOUT)


def widget(name: str, size: int, color: str = "red", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"size": size, "color": color},
        **extra,
    }


def as_dict(value: object) -> dict[str, Any]:
    """CustomObjectsApi is typed as returning `object`; at run time it is the decoded JSON."""
    assert isinstance(value, dict), f"expected a JSON object, got {type(value).__name__}"
    return value


class Widgets:
    """Typed access to the Widgets of one namespace, every call bounded by TIMEOUT."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return as_dict(
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=TIMEOUT
            )
        )

    def list(self) -> dict[str, Any]:
        return as_dict(
            self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _request_timeout=TIMEOUT
            )
        )

    def get(self, name: str) -> dict[str, Any]:
        return as_dict(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=TIMEOUT
            )
        )

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (the client's default content type for a dict body)."""
        return as_dict(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=TIMEOUT
            )
        )

    def patch_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return as_dict(
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=TIMEOUT
            )
        )

    def get_status(self, name: str) -> dict[str, Any]:
        return as_dict(
            self.custom.get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=TIMEOUT
            )
        )


def test_crd_is_established_and_discoverable(widget_crd: str, admin_api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(admin_api)
    conditions = crd_conditions(ext)
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"

    resources = client.CustomObjectsApi(admin_api).get_api_resources(GROUP, VERSION, _request_timeout=TIMEOUT)
    by_name = {r.name: r for r in resources.resources}
    assert by_name[PLURAL].kind == KIND
    assert by_name[PLURAL].namespaced is True
    assert by_name[PLURAL].short_names == [SHORT_NAME]
    assert {"create", "list", "watch", "patch"} <= set(by_name[PLURAL].verbs)
    assert "widgets/status" in by_name

    # The schema is enforced: a colour outside the enum and a size below the minimum are rejected.
    with pytest.raises(ApiException) as invalid:
        Widgets(admin_api, "default").create(widget("bad", 0, "purple"))
    assert invalid.value.status == 422
    assert "spec.color" in str(invalid.value.body)
    assert "spec.size" in str(invalid.value.body)


def test_create_list_patch_custom_resource(
    widget_crd: str, admin_api: client.ApiClient, namespace: str
) -> None:
    widgets = Widgets(admin_api, namespace)
    created = widgets.create(widget("alpha", 3))
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"]

    listed = widgets.list()
    assert listed["kind"] == f"{KIND}List"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["alpha"]

    patched = widgets.patch("alpha", {"spec": {"size": 5}})
    assert patched["spec"] == {"size": 5, "color": "red"}  # a merge patch keeps the untouched field
    assert patched["metadata"]["generation"] == 2

    fetched = widgets.get("alpha")
    assert fetched["spec"]["size"] == 5
    assert fetched["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


def test_watch_sees_added_and_modified(widget_crd: str, admin_api: client.ApiClient, namespace: str) -> None:
    widgets = Widgets(admin_api, namespace)
    since = widgets.list()["metadata"]["resourceVersion"]
    events: queue.Queue[tuple[str, dict[str, Any]] | BaseException] = queue.Queue()
    watcher = watch.Watch()  # type: ignore[no-untyped-call]

    def consume() -> None:
        try:
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                widgets.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                resource_version=since,
                timeout_seconds=20,
            ):
                events.put((event["type"], event["object"]))
        except Exception as err:  # noqa: BLE001 (handed to the test thread, which raises it)
            events.put(err)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        widgets.create(widget("watched", 1))
        widgets.patch("watched", {"spec": {"color": "blue"}})
        seen: list[tuple[str, str, str]] = []
        while len(seen) < 2:
            item = events.get(timeout=15)
            if isinstance(item, BaseException):
                raise item
            kind, obj = item
            seen.append((kind, obj["metadata"]["name"], obj["spec"]["color"]))
    finally:
        watcher.stop()  # type: ignore[no-untyped-call]
    assert seen == [("ADDED", "watched", "red"), ("MODIFIED", "watched", "blue")]
    thread.join(timeout=25)


def test_status_goes_only_through_the_status_subresource(
    widget_crd: str, admin_api: client.ApiClient, namespace: str
) -> None:
    widgets = Widgets(admin_api, namespace)
    created = widgets.create(widget("beta", 2, status={"phase": "Forged"}))
    assert "status" not in created  # dropped on create

    # Through the main resource: the spec change lands, the status change is silently ignored.
    main = widgets.patch("beta", {"spec": {"size": 4}, "status": {"phase": "Forged"}})
    assert main["spec"]["size"] == 4
    assert main["metadata"]["generation"] == 2
    assert "status" not in main

    # Through /status: the status lands, a spec change is ignored, the generation does not move.
    status = widgets.patch_status(
        "beta", {"spec": {"size": 99}, "status": {"phase": "Ready", "observedGeneration": 2}}
    )
    assert status["status"] == {"phase": "Ready", "observedGeneration": 2}
    assert status["spec"]["size"] == 4
    assert status["metadata"]["generation"] == 2

    assert widgets.get_status("beta")["status"]["phase"] == "Ready"
    assert widgets.get("beta")["status"]["phase"] == "Ready"


def test_rbac_forbids_then_allows_in_one_namespace_only(
    admin_api: client.ApiClient, user_api: client.ApiClient, namespace: str
) -> None:
    as_user = client.CoreV1Api(user_api)
    with pytest.raises(ApiException) as forbidden:
        as_user.list_namespaced_secret(namespace, _request_timeout=TIMEOUT)
    assert forbidden.value.status == 403
    body = json.loads(str(forbidden.value.body))
    assert body["reason"] == "Forbidden"
    assert f'User "{USER_NAME}" cannot list resource "secrets"' in body["message"]

    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role.model_validate(
            {
                "metadata": {"name": "secret-reader"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
            }
        ),
        _request_timeout=TIMEOUT,
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding.model_validate(
            {
                "metadata": {"name": "alice-reads-secrets"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER_NAME}],
            }
        ),
        _request_timeout=TIMEOUT,
    )

    def allowed() -> bool:  # the authorizer's RBAC cache catches up asynchronously
        try:
            as_user.list_namespaced_secret(namespace, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status == 403:
                return False
            raise
        return True

    wait_for("alice's RoleBinding to take effect", allowed)  # allowed() == a 200 answer

    with pytest.raises(ApiException) as elsewhere:
        as_user.list_namespaced_secret("default", _request_timeout=TIMEOUT)
    assert elsewhere.value.status == 403
    with pytest.raises(ApiException) as cluster_wide:
        as_user.list_secret_for_all_namespaces(_request_timeout=TIMEOUT)
    assert cluster_wide.value.status == 403
    with pytest.raises(ApiException) as write:
        as_user.create_namespaced_secret(
            namespace,
            client.V1Secret.model_validate({"metadata": {"name": "nope"}}),
            _request_timeout=TIMEOUT,
        )
    assert write.value.status == 403


def kubectl(kubeconfig: Path, cache_dir: Path, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", f"--cache-dir={cache_dir}", "--request-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_kubectl_get_shows_printer_columns(
    widget_crd: str, admin_api: client.ApiClient, admin_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    widgets = Widgets(admin_api, namespace)
    widgets.create(widget("gamma", 7, "green"))
    widgets.create(widget("delta", 9, "blue"))
    widgets.patch_status("gamma", {"status": {"phase": "Ready", "observedGeneration": 1}})

    rows = table(kubectl(admin_kubeconfig, tmp_path, "get", PLURAL, "-n", namespace))
    assert rows[0] == ["NAME", "SIZE", "COLOR", "PHASE", "AGE"]  # Observed has priority 1: -o wide only
    by_name = {row[0]: row[1:] for row in rows[1:]}
    assert by_name["gamma"][:3] == ["7", "green", "Ready"]
    assert by_name["delta"][:2] == ["9", "blue"]
    assert len(by_name["delta"]) == 3  # no phase yet: the column is empty, only SIZE COLOR AGE remain

    wide = table(
        kubectl(admin_kubeconfig, tmp_path, "get", SHORT_NAME, "gamma", "-n", namespace, "-o", "wide")
    )
    assert wide[0] == ["NAME", "SIZE", "COLOR", "PHASE", "OBSERVED", "AGE"]
    assert wide[1][:5] == ["gamma", "7", "green", "Ready", "1"]


def test_kubeconfigs_carry_the_two_identities(
    admin_kubeconfig: Path, user_kubeconfig: Path, tmp_path: Path
) -> None:
    admin = json.loads(kubectl(admin_kubeconfig, tmp_path, "auth", "whoami", "-o", "json"))
    assert admin["status"]["userInfo"]["username"] == "admin"
    assert "system:masters" in admin["status"]["userInfo"]["groups"]
    alice = json.loads(kubectl(user_kubeconfig, tmp_path, "auth", "whoami", "-o", "json"))
    assert alice["status"]["userInfo"]["username"] == USER_NAME
    assert "system:masters" not in alice["status"]["userInfo"]["groups"]


def test_redis_set_get_expire(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert r.ping()
        assert r.set("substrate:greeting", "hello")
        assert r.get("substrate:greeting") == b"hello"
        assert r.ttl("substrate:greeting") == -1  # no expiry yet
        assert r.expire("substrate:greeting", 30)
        assert 0 < int(r.ttl("substrate:greeting")) <= 30
        assert r.pexpire("substrate:greeting", 100)
        wait_for("the key to expire", lambda: r.get("substrate:greeting") is None, timeout=5, interval=0.02)
        assert r.exists("substrate:greeting") == 0
    finally:
        r.close()


async def test_async_clients_use_the_same_fixtures(k8s_cluster: LocalCluster, redis_url: str) -> None:
    tls = ssl.create_default_context(cafile=str(k8s_cluster.ca_file))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(f"{k8s_cluster.url}/version", headers=headers, ssl=tls) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["gitVersion"] == k8s_cluster.version

    r = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    try:
        await r.set("substrate:async", "1", px=50)
        assert await r.get("substrate:async") == b"1"
        await asyncio.sleep(0.2)
        assert await r.get("substrate:async") is None
    finally:
        await r.aclose()
