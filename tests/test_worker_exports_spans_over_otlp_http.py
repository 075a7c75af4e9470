"""With OTEL_TRACES_EXPORTER=otlp (http/protobuf, in the core install) a worker process sends its spans to
the collector at OTEL_EXPORTER_OTLP_ENDPOINT: a local HTTP receiver decodes what arrives."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, spawn_worker, wait_for_verdicts, wait_until
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps the resource's service name and span names."""

    def __init__(self) -> None:
        self.services: set[str] = set()
        self.spans: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                self.spans += [span.name for span in scope.spans]
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_worker_exports_its_spans_to_an_otlp_http_collector(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    collector = Collector()
    await collector.start()
    settings = make_settings()
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_SERVICE_NAME": "guardq-otlp-test",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    log = tmp_path / "worker.log"
    worker = spawn_worker(settings, str(log), otel)
    try:
        # A producer without tracing: the worker's spans are the root, so they are sampled and exported
        # (a traceparent that says "not sampled" would be respected).
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            for i in range(3):
                document = {"id": f"o{i}", "text": f"otlp export {i}"}
                await producer.send_and_wait(settings.input_topic, json.dumps(document).encode())
        finally:
            await producer.stop()
        await wait_for_verdicts(settings, [f"o{i}" for i in range(3)], timeout_s=60)

        async def exported() -> bool:
            return collector.spans.count("guard moderate") >= 3

        await wait_until(
            exported, timeout_s=30, what=f"three guard spans at the collector: {collector.spans}"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        exit_code = worker.wait(timeout=60)
        await collector.stop()
    assert exit_code == 0, log.read_text()[-2000:]
    assert collector.services == {"guardq-otlp-test"}
    assert "redis store" in collector.spans
