"""Process-wide telemetry setup for `dagwright worker` and `dagwright run`.

Three independent parts, each off unless asked for:

- logging: one stderr handler on the root logger, in human or JSON format, with run and node
  ids as fields and known secret values redacted (`activities/log_records.py`);
- metrics: a Temporal `Runtime` whose Prometheus endpoint serves Temporal's worker metrics
  and dagwright's own (`interpreter/metrics.py`, `activities/telemetry.py`) at `/metrics`;
- traces: an OpenTelemetry tracer provider that exports over OTLP, installed only when an
  endpoint is given by flag or by `OTEL_EXPORTER_OTLP_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Without one, spans are created by the no-op provider
  of the OpenTelemetry API and nothing leaves the process.

The activity and workflow interceptors live with the worker (`worker.py`); this module only
configures the process they run in.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, PrometheusConfig, Runtime, TelemetryConfig, TelemetryFilter

from dagwright.activities.log_records import HumanFormatter, JsonFormatter, RedactingFilter, RunContextFilter

logger = logging.getLogger(__name__)

LOG_FORMATS = ("human", "json")
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_SERVICE_NAME = "dagwright"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# The OpenTelemetry SDK specification makes http/protobuf the default OTLP transport.
DEFAULT_PROTOCOL = "http/protobuf"

# Bucket bounds of dagwright's histograms, because Temporal's defaults suit latencies under a
# minute. Node durations include retries and approval waits, so they reach hours and days (ms).
_NODE_DURATION_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                             300000, 900000, 3600000, 14400000, 86400000)
_ATTEMPT_DURATION_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                                60000, 300000, 900000)
_COST_BUCKETS_USD = (0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)
HISTOGRAM_BUCKETS: Mapping[str, tuple[float, ...]] = {
    "dagwright_node_duration": _NODE_DURATION_BUCKETS_MS,
    "dagwright_node_attempt_duration": _ATTEMPT_DURATION_BUCKETS_MS,
    "dagwright_llm_cost_usd": _COST_BUCKETS_USD,
}


class TelemetrySetupError(Exception):
    """A telemetry option is invalid. The message names the option and how to fix it."""


def configure_logging(log_format: str = "human", level: int | str = logging.INFO,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Send all log records to `stream` (stderr) in the given format and return the handler.

    Raises:
        TelemetrySetupError: when `log_format` is not human or json.
    """
    if log_format not in LOG_FORMATS:
        raise TelemetrySetupError(f"invalid log format '{log_format}'; use one of: {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    handler.addFilter(RunContextFilter())
    handler.addFilter(_ExpectedActivityFailureFilter())
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    # Replace handlers a previous call installed, so repeated setup does not double lines.
    for existing in list(root.handlers):
        if getattr(existing, "dagwright_handler", False):
            root.removeHandler(existing)
    handler.dagwright_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # dagwright logs one line per external call with the node's ids; httpx's own request
    # lines would repeat each call without them.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return handler


class _ExpectedActivityFailureFilter(logging.Filter):
    """Drop the traceback from the SDK's line about a node attempt that failed as designed.

    A node's own error (an ApplicationError from its activity) says everything in one line;
    other exceptions keep their traceback, because they point at a bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "temporalio.activity" and record.exc_info:
            error = record.exc_info[1]
            if isinstance(error, ApplicationError):
                record.msg = f"{record.msg}: {error.type or 'ApplicationError'}: {error.message}"
                record.exc_info = None
                record.exc_text = None
        return True


def metrics_address(port: int | None, host: str = DEFAULT_METRICS_HOST) -> str | None:
    """Return `host:port` for the Prometheus endpoint, or None when no port is given.

    Raises:
        TelemetrySetupError: when the port is outside 1 to 65535.
    """
    if port is None:
        return None
    if not 0 < port < 65536:
        raise TelemetrySetupError(f"invalid metrics port {port}; use a port from 1 to 65535")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The SDK core writes its own warnings (such as "Query not found" while a run is closing) to
# stdout. They would corrupt `--json` output, so only its errors are kept.
CORE_LOGGING = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))


def install_default_runtime() -> None:
    """Make the CLI's Temporal clients use a runtime that keeps core warnings off stdout."""
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=CORE_LOGGING)), error_if_already_set=False)


def create_runtime(bind_address: str | None) -> Runtime | None:
    """Return a Temporal runtime that serves Prometheus metrics on `bind_address`, or None.

    A runtime owns its own threads, so a process should create one and give it to every client.
    """
    if bind_address is None:
        return None
    prometheus = PrometheusConfig(bind_address=bind_address, histogram_bucket_overrides=HISTOGRAM_BUCKETS)
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus, logging=CORE_LOGGING))


def otlp_endpoint(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the OTLP endpoint from the flag, else from the environment, else None."""
    environ = os.environ if environ is None else environ
    if flag:
        return flag
    for name in ENDPOINT_ENVS:
        if environ.get(name):
            return environ[name]
    return None


def configure_tracing(endpoint: str | None = None, *, environ: Mapping[str, str] | None = None,
                      service_name: str = DEFAULT_SERVICE_NAME) -> TracerProvider | None:
    """Install a tracer provider that exports to OTLP, if an endpoint is set, and return it.

    Returns None, and installs nothing, when neither `endpoint` nor the OTLP environment
    variables name an endpoint. Call `shutdown()` on the result before the process exits so
    that buffered spans are sent.

    Raises:
        TelemetrySetupError: when the endpoint is not an http(s) URL or the protocol is unknown.
    """
    environ = os.environ if environ is None else environ
    target = otlp_endpoint(endpoint, environ)
    if target is None:
        return None
    exporter = _otlp_exporter(target, _protocol(environ))
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("exporting traces over OTLP to %s", target)
    return provider


def _protocol(environ: Mapping[str, str]) -> str:
    for name in PROTOCOL_ENVS:
        if environ.get(name):
            return environ[name]
    return DEFAULT_PROTOCOL


def _otlp_exporter(endpoint: str, protocol: str) -> SpanExporter:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TelemetrySetupError(
            f"invalid OTLP endpoint '{endpoint}'; give a URL such as http://127.0.0.1:4318"
        )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=parts.scheme == "http")
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        # A base URL gets the standard traces path, as the exporter does for the environment variable.
        if parts.path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint)
    raise TelemetrySetupError(f"unknown OTLP protocol '{protocol}'; use grpc or http/protobuf")
