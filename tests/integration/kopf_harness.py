"""The kopf operator in a test's event loop against kmock's Kubernetes emulator.

Shared by the operator integration tests (``test_operator_kuberay``,
``test_operator_ray``). ``register_resources`` declares the resources on the
emulator the way kopf needs them (every resource namespaced with its status
subresource, plus namespaces and CRDs, which kopf waits for in discovery). ``OperatorHarness`` runs ``kopf.operator`` with the handlers of
``rayrelay_operator.handlers`` as a task (standalone, namespace-scoped,
scanning disabled, a login handler for the emulator's URL) and gives the test a
Kubernetes client to the emulator with a few blocking-call helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kmock as kmock_lib
import kopf
from kubernetes import client as k8s

from rayrelay_core.api import GROUP, VERSION
from rayrelay_operator.backends.base import WorkBackend
from rayrelay_operator.handlers import build_registry, trainingjob_getter
from rayrelay_operator.reconcile import ReconcileContext
from rayrelay_operator.settings import Settings

VERBS = frozenset({"get", "list", "watch", "create", "patch", "update", "delete"})

# Builds the backends for one operator run from that run's own API client to the emulator.
BackendsFactory = Callable[[k8s.ApiClient], Mapping[str, WorkBackend]]


def register_resources(emulator: Any, resources: Mapping[str, Mapping[str, Any]]) -> None:
    """Declare ``resources`` (``"group/version/plural"`` -> kind/singular) on the emulator.

    Each is namespaced, with every verb and the status subresource; namespaces
    and CRDs are declared too (cluster-wide), as kopf waits for both in
    discovery before it watches anything.
    """
    for key, info in resources.items():
        emulator.resources[key] = kmock_lib.ResourceInfo(
            namespaced=True, verbs=set(VERBS), subresources={"status"}, **info
        )
    emulator.resources["v1/namespaces"] = kmock_lib.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=set(VERBS)
    )
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock_lib.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs=set(VERBS),
    )


async def wait_until(
    what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30, interval: float = 0.2
) -> Any:
    """Poll ``probe`` until it returns something truthy (returned), else fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


class OperatorHarness:
    """The operator running in this event loop against the emulator at ``url``.

    ``backends`` is the backend mapping for ``ReconcileContext``, or a factory
    of it called on every ``start()`` with that run's own API client (as a
    backend that talks to Kubernetes needs). The operator watches
    ``namespace`` only. ``start()`` may follow ``stop()`` (a restart).
    """

    def __init__(
        self,
        url: str,
        settings: Settings,
        backends: Mapping[str, WorkBackend] | BackendsFactory,
        namespace: str,
        *,
        watch_server_timeout: float = 10,
        start_timeout: float = 30,
        stop_timeout: float = 30,
    ) -> None:
        self.url = str(url).rstrip("/")
        self.settings = settings
        self.backends = backends
        self.namespace = namespace
        self.watch_server_timeout = watch_server_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        # The test's client to the emulator.
        self.api_client = k8s.ApiClient(k8s.Configuration(host=self.url))
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        # The test's own threads for blocking client calls (kept apart from kopf's executor).
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-client")
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ operator

    async def start(self) -> None:
        registry = build_registry(self.settings)
        url = self.url
        server_timeout = self.watch_server_timeout

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        @kopf.on.startup(registry=registry)
        def no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.scanning.disabled = True  # kmock 0.8 answers no namespace list
            settings.watching.server_timeout = server_timeout

        # A fresh client per run: see stop().
        operator_client = k8s.ApiClient(k8s.Configuration(host=url))
        backends = self.backends(operator_client) if callable(self.backends) else self.backends
        ctx = ReconcileContext(
            settings=self.settings,
            backends=backends,
            get_trainingjob=trainingjob_getter(operator_client),
        )
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                standalone=True,
                namespaces=[self.namespace],
                memo=kopf.Memo(settings=self.settings, ctx=ctx, metrics_port=0),
                stop_flag=self._stop,
                ready_flag=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=self.start_timeout)

    async def stop(self) -> None:
        assert self._stop is not None and self._task is not None, "the operator was never started"
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=self.stop_timeout)
        # On stopping, kopf cancels every task started after it, the emulator's per-connection
        # server tasks included: pooled keep-alive connections are dead now, drop them.
        self.api_client.rest_client.pool_manager.clear()

    def cancel(self) -> None:
        """Cancel a run still going (for fixtures: only a failed test leaves one running).

        Tests stop the operator themselves: on stopping, kopf cancels every task
        started after it, and a fixture finalizer is one of those.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ------------------------------------------------------------------ client helpers

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking client call on the test's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def create(
        self, plural: str, body: dict[str, Any], *, group: str = GROUP, version: str = VERSION
    ) -> None:
        await self.call(
            self.custom.create_namespaced_custom_object, group, version, self.namespace, plural, body
        )

    async def delete(self, plural: str, name: str, *, group: str = GROUP, version: str = VERSION) -> None:
        await self.call(
            self.custom.delete_namespaced_custom_object, group, version, self.namespace, plural, name
        )

    async def get(
        self, plural: str, name: str, *, group: str = GROUP, version: str = VERSION
    ) -> dict[str, Any] | None:
        """The object, or None when the emulator has none of that name."""
        try:
            return dict(
                await self.call(
                    self.custom.get_namespaced_custom_object, group, version, self.namespace, plural, name
                )
            )
        except k8s.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def status(
        self, plural: str, name: str, *, group: str = GROUP, version: str = VERSION
    ) -> dict[str, Any]:
        obj = await self.get(plural, name, group=group, version=version)
        return dict((obj or {}).get("status") or {})
