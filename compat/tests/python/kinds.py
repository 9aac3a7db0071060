"""The Python kubernetes client (PyPI `kubernetes`) against Loom's API server.

Run by compat/tests/python.rs with the kubeconfig of a test server:
    python kinds.py KUBECONFIG
Lists Loom's kinds and the core ones through the client's typed and custom
object APIs, and watches a Job and a ServiceAccount from a list's
resourceVersion, seeing ADDED, MODIFIED and DELETED in order. Prints one JSON
line of what it saw; any failure is an exception (exit 1).
"""

import json
import sys

from kubernetes import client, config, watch

GROUP, VERSION, NAMESPACE = "loom.dev", "v1", "default"
# A watch that sees nothing ends after this many seconds (server side), and a
# request that hangs fails after the client-side timeout.
WATCH_SECONDS = 30
REQUEST_TIMEOUT = 60


def job(name, replicas):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"suite": "python"}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"image": "busybox", "command": ["echo", "hello"]}},
        },
    }


def watch_events(list_call, resource_version, name, count, **kwargs):
    """The first `count` (type, name, resourceVersion) events of `name` after
    `resource_version`; fails if the watch ends before."""
    seen = []
    stream = watch.Watch()
    for event in stream.stream(
        list_call,
        resource_version=resource_version,
        timeout_seconds=WATCH_SECONDS,
        _request_timeout=REQUEST_TIMEOUT,
        **kwargs,
    ):
        obj = event["object"]
        meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
        obj_name = meta["name"] if isinstance(meta, dict) else meta.name
        rv = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
        if obj_name != name:
            continue
        seen.append((event["type"], obj_name, int(rv)))
        if len(seen) == count:
            stream.stop()
            return seen
    raise AssertionError(f"the watch of {name} ended after {seen}")


def main():
    config.load_kube_config(config_file=sys.argv[1])
    custom = client.CustomObjectsApi()
    core = client.CoreV1Api()
    report = {}

    # Lists of Loom's kinds (custom objects) and of the core ones (typed).
    for plural in ["jobs", "tasks", "services"]:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
        assert listed["kind"].endswith("List"), listed
        report[plural] = listed["kind"]
    nodes = custom.list_cluster_custom_object(GROUP, VERSION, "nodes")
    report["nodes"] = nodes["kind"]
    namespaces = core.list_namespace(_request_timeout=REQUEST_TIMEOUT)
    report["namespaces"] = sorted(n.metadata.name for n in namespaces.items)
    accounts = core.list_namespaced_service_account(NAMESPACE)
    report["serviceaccounts"] = [a.metadata.name for a in accounts.items]

    # A Job created, patched and deleted, then watched from before it existed.
    jobs = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "jobs")
    start = jobs["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "jobs", job("py", 1))
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "jobs", "py", {"spec": {"replicas": 2}}
    )
    assert patched["spec"]["replicas"] == 2, patched
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "jobs", "py")
    report["job_events"] = watch_events(
        custom.list_namespaced_custom_object,
        start,
        "py",
        3,
        group=GROUP,
        version=VERSION,
        namespace=NAMESPACE,
        plural="jobs",
    )

    # A ServiceAccount through the typed API, watched the same way.
    start = accounts.metadata.resource_version
    core.create_namespaced_service_account(
        NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="py-account"))
    )
    core.delete_namespaced_service_account("py-account", NAMESPACE)
    report["account_events"] = watch_events(
        core.list_namespaced_service_account, start, "py-account", 2, namespace=NAMESPACE
    )

    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
