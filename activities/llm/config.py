"""LLM provider settings and the model price table, both read from the worker's dagwright.toml.

Providers live on the worker, never in workflow files, so credentials and endpoints stay out of
workflow history. A workflow names a provider (``provider: mistral``) and a model; the worker
maps the name to a ``ProviderConfig``::

    [providers.mistral]                 # built in; this table only changes its settings
    timeout = "2m"

    [providers.local]
    kind = "openai"                     # any OpenAI-compatible server (vLLM, Ollama, llama.cpp)
    base_url = "http://127.0.0.1:11434/v1"
    structured_output = "json_object"

    [prices."my-finetune"]
    input_per_million = 0.2
    output_per_million = 0.6

The provider ``mistral`` (https://api.mistral.ai/v1, key from ``MISTRAL_API_KEY``) exists even
without any configuration. ``DAGWRIGHT_PROVIDER_<NAME>_BASE_URL`` overrides a provider's base URL
(the name upper-cased, with characters other than letters and digits turned into ``_``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from dagwright.activities.secrets import SecretResolver
from dagwright.config import ConfigError
from dagwright.interpreter.durations import DurationError, parse_duration

ProviderKind = Literal["mistral", "openai"]
StructuredOutput = Literal["json_schema", "json_object", "none"]

DEFAULT_PROVIDER = "mistral"
MISTRAL_BASE_URL = "https://api.mistral.ai/v1"
DEFAULT_KEY_ENV: dict[str, str] = {"mistral": "MISTRAL_API_KEY", "openai": "OPENAI_API_KEY"}

# Long generations on large models take minutes; httpx's own default of 5 s would cut them off.
DEFAULT_TIMEOUT_SECONDS = 120.0

BASE_URL_ENV = "DAGWRIGHT_PROVIDER_{name}_BASE_URL"

_PROVIDER_KEYS = {
    "kind",
    "base_url",
    "api_key_env",
    "api_key_secret",
    "timeout",
    "headers",
    "structured_output",
    "strict_schema",
}
_PRICE_KEYS = {"input_per_million", "output_per_million"}


@dataclass(frozen=True)
class ProviderConfig:
    """One configured LLM endpoint: where it is, how to authenticate, what it accepts."""

    name: str
    kind: ProviderKind
    base_url: str
    # Exactly one of these names where the API key comes from.
    api_key_env: str | None = None
    api_key_secret: str | None = None
    # False when the key source is only the kind's default, so a local OpenAI-compatible server
    # that needs no key works without one.
    key_required: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    headers: dict[str, str] = field(default_factory=dict)
    structured_output: StructuredOutput = "json_schema"
    # OpenAI's own API rejects a strict schema that lacks additionalProperties: false on every
    # object, so strict mode is opt-in for OpenAI-compatible providers.
    strict_schema: bool = True

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        """Return the API key, or None when it is not set.

        Raises:
            ApplicationError: ``SecretNotFound`` when ``api_key_secret`` names a missing secret.
        """
        if self.api_key_secret is not None:
            return SecretResolver(environ).lookup(self.api_key_secret)
        if self.api_key_env is None:
            return None
        return environ.get(self.api_key_env) or None

    def key_setting(self) -> str:
        """Describe where the key comes from, for error messages that tell the user what to fix."""
        if self.api_key_secret is not None:
            return f"the secret {self.api_key_secret!r} (api_key_secret)"
        return str(self.api_key_env)


def load_providers(raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Build the worker's providers from a parsed dagwright.toml and the environment.

    Args:
        raw: the whole parsed configuration file (``Settings.raw``); only ``[providers]`` is read.
        environ: the environment, for ``DAGWRIGHT_PROVIDER_<NAME>_BASE_URL`` overrides.

    Raises:
        ConfigError: a provider table has an unknown setting or an invalid value.
    """
    tables = raw.get("providers", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("[providers] in dagwright.toml must be a table of provider tables")

    providers = {DEFAULT_PROVIDER: _builtin_mistral()}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[providers.{name}] in dagwright.toml must be a table")
        providers[name] = _provider(name, table)

    for name, provider in list(providers.items()):
        override = environ.get(base_url_env(name))
        if override:
            providers[name] = _replace_base_url(provider, _base_url(name, override))
    return providers


def base_url_env(name: str) -> str:
    """Return the environment variable that overrides the base URL of provider ``name``."""
    return BASE_URL_ENV.format(name=re.sub(r"[^A-Z0-9]", "_", name.upper()))


def _builtin_mistral() -> ProviderConfig:
    return ProviderConfig(
        name=DEFAULT_PROVIDER,
        kind="mistral",
        base_url=MISTRAL_BASE_URL,
        api_key_env=DEFAULT_KEY_ENV["mistral"],
    )


def _provider(name: str, table: Mapping[str, Any]) -> ProviderConfig:
    where = f"[providers.{name}] in dagwright.toml"
    unknown = sorted(set(table) - _PROVIDER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_PROVIDER_KEYS))}"
        )

    kind = table.get("kind", "mistral" if name == DEFAULT_PROVIDER else None)
    if kind not in ("mistral", "openai"):
        raise ConfigError(f'{where}: kind must be "mistral" or "openai", got {kind!r}')

    base_url = table.get("base_url", MISTRAL_BASE_URL if kind == "mistral" else None)
    if base_url is None:
        raise ConfigError(
            f'{where}: base_url is required for kind "openai", '
            'for example base_url = "http://127.0.0.1:8000/v1"'
        )

    if "api_key_env" in table and "api_key_secret" in table:
        raise ConfigError(f"{where}: set api_key_env or api_key_secret, not both")
    api_key_secret = _optional_str(table, "api_key_secret", where)
    api_key_env = _optional_str(table, "api_key_env", where)
    key_required = kind == "mistral" or api_key_env is not None or api_key_secret is not None
    if api_key_secret is None and api_key_env is None:
        api_key_env = DEFAULT_KEY_ENV[kind]

    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=_base_url(name, base_url),
        api_key_env=api_key_env,
        api_key_secret=api_key_secret,
        key_required=key_required,
        timeout_seconds=_timeout(table, where),
        headers=_headers(table, where),
        structured_output=_structured_output(table, where),
        strict_schema=_strict_schema(table, where, kind),
    )


def _optional_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _base_url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/]", value):
        raise ConfigError(
            f"provider {name!r}: base_url must be an http:// or https:// URL, got {value!r}"
        )
    return value.rstrip("/")


def _timeout(table: Mapping[str, Any], where: str) -> float:
    if "timeout" not in table:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = parse_duration(table["timeout"])
    except DurationError as exc:
        raise ConfigError(f"{where}: timeout: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}: timeout must be positive, got {table['timeout']!r}")
    return seconds


def _headers(table: Mapping[str, Any], where: str) -> dict[str, str]:
    headers = table.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(value, str) for value in headers.values()
    ):
        raise ConfigError(f"{where}: headers must be a table of strings")
    if any(name.lower() == "authorization" for name in headers):
        raise ConfigError(
            f"{where}: set the key with api_key_env or api_key_secret, not an Authorization "
            "header, so that it never sits in the configuration file"
        )
    return dict(headers)


def _structured_output(table: Mapping[str, Any], where: str) -> StructuredOutput:
    value = table.get("structured_output", "json_schema")
    if value not in ("json_schema", "json_object", "none"):
        raise ConfigError(
            f'{where}: structured_output must be "json_schema", "json_object" or "none", '
            f"got {value!r}"
        )
    return value


def _strict_schema(table: Mapping[str, Any], where: str, kind: str) -> bool:
    value = table.get("strict_schema", kind == "mistral")
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: strict_schema must be true or false, got {value!r}")
    return value


def _replace_base_url(provider: ProviderConfig, base_url: str) -> ProviderConfig:
    values = {name: getattr(provider, name) for name in provider.__dataclass_fields__}
    values["base_url"] = base_url
    return ProviderConfig(**values)


# Prices.


@dataclass(frozen=True)
class ModelPrice:
    """List price of one model in USD per million tokens."""

    input_per_million: float
    output_per_million: float


class PriceTable:
    """Model prices: the shipped Mistral list prices plus the worker's overrides.

    The shipped prices apply only to providers of kind ``mistral``, because the name of a model
    on a local OpenAI-compatible server does not determine what it costs. Overrides from the worker
    configuration apply to every provider.
    """

    def __init__(
        self, shipped: Mapping[str, ModelPrice], overrides: Mapping[str, ModelPrice]
    ) -> None:
        self._shipped = dict(shipped)
        self._overrides = dict(overrides)

    def price(self, model: str, kind: str) -> ModelPrice | None:
        """Return the price of ``model`` on a provider of ``kind``, or None when it is unknown."""
        if model in self._overrides:
            return self._overrides[model]
        if kind == "mistral":
            return self._shipped.get(model)
        return None

    def cost(
        self, model: str, kind: str, prompt_tokens: int, completion_tokens: int
    ) -> float | None:
        """Return the cost in USD of one call, or None when the model has no price.

        None rather than 0, so that a budget or a report never mistakes "unknown" for "free".
        """
        price = self.price(model, kind)
        if price is None:
            return None
        total = (
            prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million
        ) / 1_000_000
        # Twelve decimals drop float noise such as 3.0000000000000004e-06 and keep fractions of
        # a micro-dollar, which matter when costs are summed over many calls.
        return round(total, 12)


def load_prices(raw: Mapping[str, Any]) -> PriceTable:
    """Build the price table from the shipped prices.toml and ``[prices]`` of dagwright.toml.

    Raises:
        ConfigError: a ``[prices."model"]`` entry is not a table of two non-negative numbers.
    """
    shipped_text = resources.files(__package__).joinpath("prices.toml").read_text("utf-8")
    shipped = _prices(tomllib.loads(shipped_text).get("prices", {}), "the shipped prices.toml")
    return PriceTable(shipped, _prices(raw.get("prices", {}), "dagwright.toml"))


def _prices(tables: Any, source: str) -> dict[str, ModelPrice]:
    if not isinstance(tables, Mapping):
        raise ConfigError(f"[prices] in {source} must be a table of model tables")
    return {model: _price(model, table, source) for model, table in tables.items()}


def _price(model: str, table: Any, source: str) -> ModelPrice:
    where = f'[prices."{model}"] in {source}'
    if not isinstance(table, Mapping) or set(table) != _PRICE_KEYS:
        raise ConfigError(
            f"{where} must set exactly input_per_million and output_per_million "
            "(USD per million tokens; 0 for the output of an embedding model)"
        )
    values = {}
    for key in sorted(_PRICE_KEYS):
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: {key} must be a non-negative number, got {value!r}")
        values[key] = float(value)
    return ModelPrice(**values)
