"""The ``dagwright.sql`` activity: one statement on a named connection, with its failures classified.

Each attempt borrows a connection from the connection's pool (see ``sql_connections.py``) and
runs the statement in its own transaction. The transaction is ``READ ONLY`` when the node or the
connection is read-only, and its ``statement_timeout`` is the smaller of the node's timeout and
the connection's ``statement_timeout``. The statement is prepared first, so parameters are bound by
the driver as ``$1..$n`` and converted from JSON to the type the server inferred for each one.
Results are converted to JSON-safe values as the table in ``docs/sql.md`` describes.

Failures are Temporal ``ApplicationError``s with these stable ``type`` strings:

- ``SqlConnectionNotConfigured`` (permanent): the node names a connection that this worker does
  not define, the connection's URL variable is unset, or its URL is invalid.
- ``SqlConnectionError`` (retryable): the server cannot be reached, refuses the connection,
  has too many connections (SQLSTATE 53300), is shutting down (57P01, 57P02, 57P03), or the
  connection was lost during the statement; also an embedded server that did not start.
- ``SqlTransient`` (retryable): serialization failure (40001), deadlock (40P01), lock not
  available (55P03), insufficient resources (class 53) or a system error (class 58).
- ``SqlTimeout`` (retryable): the statement ran longer than ``statement_timeout`` (57014). A
  retry helps when the cause was load or a lock held by another session; add ``SqlTimeout`` to
  the node's ``retry.non_retryable`` when the query itself is too slow.
- ``SqlError`` (permanent): the server rejected the statement: syntax (42601), unknown table or
  column (42P01, 42703), permission (42501), constraint (class 23), data (class 22), a write in a
  read-only transaction (25006), and every other SQLSTATE not listed above. The message gives
  the node id, the server's message and the SQLSTATE.
- ``SqlParamInvalid`` (permanent): a parameter cannot be converted to its SQL type, or the
  number of parameters does not match the placeholders.
- ``SqlTooManyRows`` (permanent): more rows than ``max_rows`` (mode ``rows``) or more than one
  row (modes ``row`` and ``value``). The transaction is rolled back.
- ``SqlResultInvalid`` (permanent): the result has two columns of the same name.
- ``SqlSeedFailed`` (permanent): a seed file of the embedded database failed.

The URL and the password of a connection never appear in messages, logs or history: every
message is scrubbed of them, and driver exceptions are not chained to the Temporal error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from datetime import time as time_of_day
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dagwright.activities.errors import permanent, retryable
from dagwright.activities.heartbeat import heartbeating
from dagwright.activities.secrets import redact
from dagwright.activities.sql_connections import (
    ConnectionConfig,
    ConnectionNotConfigured,
    EmbeddedServerError,
    SeedFailed,
    SqlConnections,
)
from dagwright.interpreter.durations import DurationError, parse_duration

logger = logging.getLogger(__name__)

ACTIVITY_NAME = "dagwright.sql"

SQL_CONNECTION_NOT_CONFIGURED = "SqlConnectionNotConfigured"
SQL_CONNECTION_ERROR = "SqlConnectionError"
SQL_TRANSIENT = "SqlTransient"
SQL_TIMEOUT = "SqlTimeout"
SQL_ERROR = "SqlError"
SQL_PARAM_INVALID = "SqlParamInvalid"
SQL_TOO_MANY_ROWS = "SqlTooManyRows"
SQL_RESULT_INVALID = "SqlResultInvalid"
SQL_SEED_FAILED = "SqlSeedFailed"

# SQLSTATE codes and classes (first two characters) that another attempt may get past.
_CONNECTION_STATES = {"53300", "57P01", "57P02", "57P03", "57P05"}
_CONNECTION_CLASSES = {"08"}
_TRANSIENT_STATES = {"40001", "40P01", "40003", "55P03"}
_TRANSIENT_CLASSES = {"53", "58"}
_TIMEOUT_STATE = "57014"
_READ_ONLY_STATE = "25006"

# Exceptions of asyncpg and of the socket layer that classify_error translates.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# Characters of a parameter value quoted in an error message.
_VALUE_PREVIEW_CHARS = 80


class SqlRequest(BaseModel):
    """Input of the ``dagwright.sql`` activity, built by the workflow from a ``sql`` node."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    connection: str
    query: str
    params: list[Any] = []
    mode: Literal["rows", "row", "value", "execute"] = "rows"
    read_only: bool = True
    max_rows: int = Field(10_000, ge=1)
    # The node's timeout for one attempt; None when the node has none.
    timeout_seconds: float | None = None


class SqlActivities:
    """The ``dagwright.sql`` activity over a worker's named connections."""

    def __init__(self, connections: SqlConnections) -> None:
        self.connections = connections

    @activity.defn(name=ACTIVITY_NAME)
    async def sql(self, request: SqlRequest) -> Any:
        """Run the node's statement and return rows, one row, one value or the status line.

        Returns:
            Mode ``rows``: a list of mappings. ``row``: a mapping or None. ``value``: the first
            column of the only row, or None. ``execute``: ``{"status": "INSERT 0 1",
            "rowcount": 1}``, where rowcount is None for commands that report no count.

        Raises:
            ApplicationError: classified as the module docstring describes.
            asyncio.CancelledError: the activity was cancelled; the running query is cancelled
                on the server too.
        """
        started = time.monotonic()
        error_type: str | None = None
        result: Any = None
        try:
            async with heartbeating():
                result = await self._run(request)
            return result
        except ApplicationError as exc:
            error_type = exc.type
            raise
        except asyncio.CancelledError:
            error_type = "Cancelled"
            raise
        finally:
            _log_call(request, result, error_type, started)

    async def _run(self, request: SqlRequest) -> Any:
        try:
            config = self.connections.config(request.connection)
            pool = await self.connections.pool(request.connection)
        except (ConnectionNotConfigured, SeedFailed, EmbeddedServerError) as exc:
            raise self._setup_error(request, exc) from None
        except _DRIVER_ERRORS as exc:
            raise self._driver_error(request, exc, connection_lost=True) from None

        # Stays true when acquiring fails, because then no connection was ever usable.
        connection_lost = True
        try:
            async with pool.acquire() as connection:
                try:
                    return await _execute(connection, request, config)
                finally:
                    connection_lost = connection.is_closed()
        except _DRIVER_ERRORS as exc:
            raise self._driver_error(request, exc, connection_lost=connection_lost) from None

    def _setup_error(self, request: SqlRequest, exc: Exception) -> ApplicationError:
        message = redact(
            f"sql node {request.node_id!r}: {exc}", self.connections.redactions(request.connection)
        )
        if isinstance(exc, SeedFailed):
            return permanent(message, type=SQL_SEED_FAILED)
        if isinstance(exc, EmbeddedServerError):
            return retryable(message, type=SQL_CONNECTION_ERROR)
        return permanent(
            message, type=SQL_CONNECTION_NOT_CONFIGURED, details={"connection": request.connection}
        )

    def _driver_error(
        self, request: SqlRequest, exc: Exception, *, connection_lost: bool
    ) -> ApplicationError:
        return classify_error(
            request,
            exc,
            connection_lost=connection_lost,
            secrets=self.connections.redactions(request.connection),
        )


async def _execute(connection: asyncpg.Connection, request: SqlRequest, config: ConnectionConfig) -> Any:
    read_only = request.read_only or config.read_only
    timeout = _statement_timeout(request, config)
    async with connection.transaction(readonly=read_only):
        if timeout is not None:
            milliseconds = max(1, round(timeout * 1000))
            # SET LOCAL takes no parameters; set_config(..., true) is its parameterized form.
            await connection.execute(
                "SELECT set_config('statement_timeout', $1, true)", f"{milliseconds}ms"
            )
        statement = await connection.prepare(request.query)
        args = convert_params(request, statement.get_parameters())

        if request.mode == "execute":
            await statement.fetch(*args)
            status = statement.get_statusmsg() or ""
            return {"status": status, "rowcount": _rowcount(status)}

        columns = _column_names(request, statement.get_attributes())
        column_types = [attribute.type.name for attribute in statement.get_attributes()]
        # The cursor requests at most `limit` rows from the server, so an oversized result is never
        # transferred. One row beyond the cap is enough to detect that the cap was exceeded.
        limit = request.max_rows + 1 if request.mode == "rows" else 2
        cursor = await statement.cursor(*args)
        records = await cursor.fetch(limit)
        _check_row_count(request, len(records), limit)
        rows = [
            {name: to_json_value(record[index], column_types[index]) for index, name in enumerate(columns)}
            for record in records
        ]

    if request.mode == "rows":
        return rows
    if not rows:
        return None
    if request.mode == "row":
        return rows[0]
    return next(iter(rows[0].values()), None)


def _statement_timeout(request: SqlRequest, config: ConnectionConfig) -> float | None:
    limits = [limit for limit in (request.timeout_seconds, config.statement_timeout) if limit]
    return min(limits) if limits else None


def _column_names(request: SqlRequest, attributes: Sequence[Any]) -> list[str]:
    names = [attribute.name for attribute in attributes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise permanent(
            f"sql node {request.node_id!r}: the result has more than one column named "
            f"{', '.join(repr(name) for name in duplicates)}. Give the columns distinct names "
            "with AS, because each row becomes a mapping from column name to value.",
            type=SQL_RESULT_INVALID,
        )
    return names


def _check_row_count(request: SqlRequest, count: int, limit: int) -> None:
    if count < limit:
        return
    if request.mode == "rows":
        raise permanent(
            f"sql node {request.node_id!r} returned more than max_rows ({request.max_rows}) rows. "
            "Add a LIMIT or aggregate in SQL, or raise the node's max_rows.",
            type=SQL_TOO_MANY_ROWS,
            details={"max_rows": request.max_rows},
        )
    raise permanent(
        f"sql node {request.node_id!r} expected at most one row in mode {request.mode!r}, but the "
        "query returned more. Add a WHERE condition or LIMIT 1, or use mode 'rows'.",
        type=SQL_TOO_MANY_ROWS,
    )


def _rowcount(status: str) -> int | None:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


# ---------------------------------------------------------------------------------------------
# Parameters: JSON values from the workflow -> the Python types asyncpg encodes for each SQL type


class _ParamValueError(ValueError):
    """A parameter value that does not fit its SQL type; the message states the expected form."""


def convert_params(request: SqlRequest, parameter_types: Sequence[Any]) -> list[Any]:
    """Convert the node's JSON params to driver values for the statement's parameter types.

    Raises:
        ApplicationError: ``SqlParamInvalid`` naming the parameter, its type and the value.
    """
    if len(request.params) != len(parameter_types):
        raise permanent(
            f"sql node {request.node_id!r}: the query has {len(parameter_types)} placeholder(s) "
            f"but params has {len(request.params)} value(s). Pass one value per $n placeholder.",
            type=SQL_PARAM_INVALID,
        )
    converted = []
    for position, (value, parameter_type) in enumerate(zip(request.params, parameter_types), start=1):
        try:
            converted.append(to_driver_value(value, parameter_type.name))
        except _ParamValueError as exc:
            preview = json.dumps(value, ensure_ascii=False, default=str)[:_VALUE_PREVIEW_CHARS]
            raise permanent(
                f"sql node {request.node_id!r}: parameter ${position} has type "
                f"{parameter_type.name}, but its value {preview} is not valid for it: {exc}.",
                type=SQL_PARAM_INVALID,
                details={"parameter": position, "type": parameter_type.name},
            ) from None
    return converted


def to_driver_value(value: Any, type_name: str) -> Any:
    """Return ``value`` (a JSON value) as the Python value asyncpg expects for ``type_name``.

    ``type_name`` is asyncpg's name for the type: ``int4``, ``timestamptz``, ``text[]``, ...
    Types without a rule here receive the value unchanged, and asyncpg checks it.
    """
    if value is None:
        return None
    if type_name.endswith("[]"):
        if not isinstance(value, list):
            raise _ParamValueError("an array takes a JSON list")
        element = type_name[:-2]
        # Nested lists are the dimensions of a multidimensional array, except for element types
        # whose own values are lists.
        return [
            to_driver_value(item, type_name if isinstance(item, list) and element not in _LIST_VALUED else element)
            for item in value
        ]
    converter = _PARAM_CONVERTERS.get(type_name)
    return value if converter is None else converter(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise _ParamValueError("expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _ParamValueError("expected an integer")


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _ParamValueError("expected a number")


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _ParamValueError("expected a number or a numeric string, not a boolean")
    if isinstance(value, float):
        # repr gives the shortest text that round-trips, so 0.1 becomes 0.1 and not 0.1000000000000000055...
        return Decimal(repr(value))
    if isinstance(value, (int, str)):
        try:
            return Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            pass
    raise _ParamValueError("expected a number or a numeric string such as \"12.50\"")


def _timestamptz(value: Any) -> datetime:
    moment = _iso(value, datetime.fromisoformat, "an ISO 8601 timestamp such as 2024-05-01T12:00:00Z")
    # A timestamp without offset is read as UTC, not as the session's or the worker's time zone.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _timestamp(value: Any) -> datetime:
    moment = _iso(value, datetime.fromisoformat, "an ISO 8601 timestamp such as 2024-05-01T12:00:00")
    # An offset is applied rather than dropped: the stored value is the UTC time of that moment.
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _date(value: Any) -> date:
    return _iso(value, date.fromisoformat, "an ISO 8601 date such as 2024-05-01")


def _time(value: Any) -> time_of_day:
    moment = _iso(value, time_of_day.fromisoformat, "an ISO 8601 time such as 13:45:00")
    if moment.tzinfo is not None:
        raise _ParamValueError("a time without time zone takes no UTC offset; cast the placeholder to timetz")
    return moment


def _timetz(value: Any) -> time_of_day:
    moment = _iso(value, time_of_day.fromisoformat, "an ISO 8601 time such as 13:45:00+02:00")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(value: Any, parse: Callable[[str], Any], expected: str) -> Any:
    if isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            pass
    raise _ParamValueError(f"expected {expected}")


def _interval(value: Any) -> timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        try:
            return timedelta(seconds=parse_duration(value))
        except DurationError:
            pass
    raise _ParamValueError("expected a number of seconds or a duration such as \"90s\" or \"PT1H\"")


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise _ParamValueError("expected a UUID string")


def _bytea(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise _ParamValueError("bytea takes a base64 string")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _ParamValueError("expected true or false")


def _json_text(value: Any) -> str:
    # A JSON string is stored as a JSON string. To have the server parse text that contains
    # JSON, the query casts the placeholder through text: $1::text::jsonb.
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _vector(value: Any) -> str:
    # pgvector's text form; no codec is registered, so asyncpg sends unknown types as text.
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    ):
        return "[" + ",".join(repr(float(item)) for item in value) + "]"
    raise _ParamValueError("a vector takes a JSON list of numbers")


_PARAM_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int2": _integer,
    "int4": _integer,
    "int8": _integer,
    "oid": _integer,
    "float4": _float,
    "float8": _float,
    "numeric": _decimal,
    "timestamptz": _timestamptz,
    "timestamp": _timestamp,
    "date": _date,
    "time": _time,
    "timetz": _timetz,
    "interval": _interval,
    "uuid": _uuid,
    "bytea": _bytea,
    "bool": _boolean,
    "json": _json_text,
    "jsonb": _json_text,
    "text": _text,
    "varchar": _text,
    "bpchar": _text,
    "name": _text,
    "vector": _vector,
    "halfvec": _vector,
}

# Types whose single value is a JSON list or mapping.
_LIST_VALUED = {"json", "jsonb", "vector", "halfvec"}


# ---------------------------------------------------------------------------------------------
# Results: driver values -> JSON-safe values


def to_json_value(value: Any, type_name: str) -> Any:
    """Return a column value as a JSON-safe value, following the table in ``docs/sql.md``."""
    if value is None:
        return None
    if type_name.endswith("[]") and isinstance(value, list):
        element = type_name[:-2]
        return [to_json_value(item, type_name if isinstance(item, list) else element) for item in value]
    if type_name in ("json", "jsonb") and isinstance(value, str):
        return json.loads(value)
    if type_name in ("vector", "halfvec") and isinstance(value, str):
        body = value.strip().strip("[]")
        return [float(item) for item in body.split(",")] if body else []
    return _plain_json_value(value)


def _plain_json_value(value: Any) -> Any:
    """Convert a driver value by its Python type, for columns without a type-specific rule."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity, so those become the strings PostgreSQL prints for them.
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return value

    if isinstance(value, Decimal):
        # Fixed-point text keeps every digit, while a float would round 0.1 + 0.2 and large amounts.
        return format(value, "f")
    if isinstance(value, (datetime, date, time_of_day)):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds

    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")

    if isinstance(value, asyncpg.Record):
        return {key: _plain_json_value(item) for key, item in value.items()}
    if isinstance(value, asyncpg.Range):
        return _range_value(value)
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, (list, tuple)):
        return [_plain_json_value(item) for item in value]

    # inet and cidr values (ipaddress objects), money, tsvector and any type without a rule
    # above become their text form.
    return str(value)


def _range_value(value: asyncpg.Range) -> dict[str, Any]:
    return {
        "lower": _plain_json_value(value.lower),
        "upper": _plain_json_value(value.upper),
        "lower_inc": value.lower_inc,
        "upper_inc": value.upper_inc,
        "empty": value.isempty,
    }


# ---------------------------------------------------------------------------------------------
# Failures


def classify_error(
    request: SqlRequest, exc: Exception, *, connection_lost: bool, secrets: Sequence[str] = ()
) -> ApplicationError:
    """Translate a driver or OS exception into a classified error, its message scrubbed of ``secrets``.

    ``connection_lost`` is true when the failure closed the connection, which makes an
    otherwise unclassified driver error a retryable connection error.
    """
    where = f"sql node {request.node_id!r}"
    if isinstance(exc, asyncpg.PostgresError):
        kind, retry, message = _server_failure(request, exc)
    elif isinstance(exc, (OSError, TimeoutError)) or connection_lost:
        kind, retry = SQL_CONNECTION_ERROR, True
        message = (
            f"{where} cannot reach the database of connection {request.connection!r} "
            f"({type(exc).__name__}: {exc}). Check that the server is running and reachable."
        )
    else:
        kind, retry, message = SQL_ERROR, False, f"{where} failed: {exc}."

    message = redact(message, secrets)
    if retry:
        return retryable(message, type=kind)
    details = {"connection": request.connection}
    if isinstance(exc, asyncpg.PostgresError):
        details["sqlstate"] = exc.sqlstate or ""
    return permanent(message, type=kind, details=details)


def _server_failure(request: SqlRequest, exc: asyncpg.PostgresError) -> tuple[str, bool, str]:
    """Return the error type, whether it is retryable, and the message for a server error."""
    sqlstate = exc.sqlstate or ""
    where = f"sql node {request.node_id!r}"
    cause = f"{_server_message(exc)} (SQLSTATE {sqlstate})"

    if sqlstate in _CONNECTION_STATES or sqlstate[:2] in _CONNECTION_CLASSES:
        return (
            SQL_CONNECTION_ERROR,
            True,
            f"{where} lost or could not open its connection {request.connection!r}: {cause}.",
        )
    if sqlstate == _TIMEOUT_STATE:
        return (
            SQL_TIMEOUT,
            True,
            f"{where} failed: {cause}. The statement ran longer than its statement_timeout (the "
            "node's timeout or the connection's statement_timeout, whichever is smaller).",
        )
    if sqlstate in _TRANSIENT_STATES or sqlstate[:2] in _TRANSIENT_CLASSES:
        return SQL_TRANSIENT, True, f"{where} failed: {cause}."

    message = f"{where} failed: {cause}."
    if sqlstate == _READ_ONLY_STATE:
        message += (
            " The statement ran in a read-only transaction because the node has read_only: true "
            "(the default) or its connection sets read_only = true. Set read_only: false on the "
            "node to allow writes."
        )
    return SQL_ERROR, False, message


def _server_message(exc: asyncpg.PostgresError) -> str:
    text = getattr(exc, "message", None) or str(exc)
    detail = getattr(exc, "detail", None)
    hint = getattr(exc, "hint", None)
    if detail:
        text += f". Detail: {detail}"
    if hint:
        text += f". Hint: {hint}"
    return text


def _log_call(request: SqlRequest, result: Any, error_type: str | None, started: float) -> None:
    latency_ms = round((time.monotonic() - started) * 1000)
    attempt = activity.info().attempt
    rows = len(result) if request.mode == "rows" and isinstance(result, list) else None
    logger.info(
        "sql call node=%s connection=%s mode=%s rows=%s error=%s latency_ms=%d attempt=%d",
        request.node_id,
        request.connection,
        request.mode,
        rows,
        error_type,
        latency_ms,
        attempt,
        extra={
            "node_id": request.node_id,
            "connection": request.connection,
            "mode": request.mode,
            "rows": rows,
            "error_type": error_type,
            "latency_ms": latency_ms,
            "attempt": attempt,
        },
    )
