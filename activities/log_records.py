"""Fields, secret redaction and formats of a worker's log records.

Every record logged while a node activity runs gets the node's ids as attributes
(`run_id`, `node_id`, `attempt`, `workflow`, `node_type`), set by the activity telemetry
interceptor through a context variable. Records from `workflow.logger` and `activity.logger`
carry Temporal's `temporal_workflow` / `temporal_activity` dicts; `RunContextFilter` flattens
them to the same names. dagwright calls a run's workflow id its "run id" (`dagwright status
RUN` takes it), so `run_id` is the workflow id and `temporal_run_id` is Temporal's run id.

`SecretRedactor` is a safety net, not the protection: code must not log secrets in the first
place. It replaces the values of `DAGWRIGHT_SECRET_*` variables, of the secrets file and of
provider API key variables (`*_API_KEY`) wherever they appear in a formatted line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from dagwright.activities.secrets import ENV_PREFIX, REDACTED, SECRETS_FILE_ENV

# Values shorter than this are not redacted: replacing "1" or "abc" everywhere would garble
# every line, and such values give no protection as secrets anyway.
MIN_SECRET_LENGTH = 4
API_KEY_SUFFIX = "_API_KEY"

# Attributes of a bare LogRecord; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Fields the human format appends, in this order, when a record has them.
_HUMAN_FIELDS = ("run_id", "node_id", "attempt")

_node_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "dagwright_node_log_fields", default=None
)


@contextmanager
def node_log_fields(fields: Mapping[str, Any]) -> Iterator[None]:
    """Put `fields` on every record logged in this context (one node attempt)."""
    token = _node_fields.set(fields)
    try:
        yield
    finally:
        _node_fields.reset(token)


class RunContextFilter(logging.Filter):
    """Add run and node ids to a record as attributes, without replacing ones already set."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context_fields(record).items():
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    workflow_details = getattr(record, "temporal_workflow", None)
    if isinstance(workflow_details, Mapping):
        fields.update(
            run_id=workflow_details.get("workflow_id"),
            temporal_run_id=workflow_details.get("run_id"),
            workflow_type=workflow_details.get("workflow_type"),
            task_queue=workflow_details.get("task_queue"),
        )
    activity_details = getattr(record, "temporal_activity", None)
    if isinstance(activity_details, Mapping):
        fields.update(
            run_id=activity_details.get("workflow_id"),
            temporal_run_id=activity_details.get("workflow_run_id"),
            activity_id=activity_details.get("activity_id"),
            activity_type=activity_details.get("activity_type"),
            attempt=activity_details.get("attempt"),
            task_queue=activity_details.get("task_queue"),
        )
    fields.update(_node_fields.get() or {})
    return fields


class SecretRedactor:
    """Replace known secret values in text with `[REDACTED]`.

    The environment is read on each call, so secrets set after start-up are covered too. The
    secrets file is read once, the first time it is needed.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._file_values: list[str] | None = None

    def values(self) -> list[str]:
        """Return the secret values to hide, longest first so that no fragment stays visible."""
        found = {
            value
            for name, value in self._environ.items()
            if name.startswith(ENV_PREFIX) or name.endswith(API_KEY_SUFFIX)
        }
        found.update(self._secrets_file_values())
        return sorted((value for value in found if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self.values():
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def _secrets_file_values(self) -> list[str]:
        if self._file_values is None:
            self._file_values = []
            path = self._environ.get(SECRETS_FILE_ENV)
            if path:
                try:
                    with open(path, encoding="utf-8") as handle:
                        data = json.load(handle)
                except (OSError, ValueError):
                    # The activity that needs the file reports it as invalid. A log filter must not fail.
                    data = {}
                if isinstance(data, dict):
                    self._file_values = [value for value in data.values() if isinstance(value, str)]
        return self._file_values


class RedactingFilter(logging.Filter):
    """Redact secret values from a record's message and string `extra` fields."""

    def __init__(self, redactor: SecretRedactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or SecretRedactor()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor.redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, self.redactor.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line: time, level, logger, message and fields."""

    def __init__(self, redactor: SecretRedactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or SecretRedactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in ("temporal_workflow", "temporal_activity"):
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redactor.redact(json.dumps(entry, ensure_ascii=False, default=str))


class HumanFormatter(logging.Formatter):
    """Format a record as `time level logger: message [run=.. node=.. attempt=..]`."""

    def __init__(self, redactor: SecretRedactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redactor = redactor or SecretRedactor()

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The ids go on the message line, before any traceback that format() appends.
        line = super().formatMessage(record)
        ids = [f"{name.removesuffix('_id')}={getattr(record, name)}" for name in _HUMAN_FIELDS
               if getattr(record, name, None) is not None]
        return f"{line} [{' '.join(ids)}]" if ids else line

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))
