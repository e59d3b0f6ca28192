"""The XML config: parsed safely with lxml, validated against the XSD, turned
into frozen dataclasses with a default for every optional setting."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lxml import etree

from .cache.redis import redact_url
from .dialects import get_dialect
from .encodings import known_names
from .models import BUILTIN_MODELS, ModelFacts, builtin_facts
from .pricing import ANTHROPIC_PRICING, NO_CACHE_PRICING, OPENAI_PRICING, Pricing
from .tokens import DEFAULT_ENCODING

DEFAULT_CONFIG_NAME = "performance.xml"
SCHEMA_NAME = "performance.xsd"


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """A config that cannot be used; `issues` says where and why."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


@dataclass(frozen=True)
class ModelSettings:
    """Per-model facts, matched by glob; the first match that sets a field wins,
    and a field no match sets comes from the built-in table (proxy/models.py)."""

    pattern: str
    encoding: str | None = None
    context_window: int | None = None
    low_water: float | None = None
    max_output: int | None = None
    margin: float | None = None


@dataclass(frozen=True)
class TokenManagement:
    budget: int = 200_000
    compression_threshold: float = 0.7
    pruning_distance: int = 3
    tier_shares: tuple[int, int, int, int] = (20, 20, 50, 10)
    critical_overflow: str = "fit"
    # the most a compaction leaves of the room above the pinned head
    low_water: float = 0.35
    rewrite_mode: str = "enforce"
    rollout_percent: int = 100
    default_encoding: str = DEFAULT_ENCODING
    models: tuple[ModelSettings, ...] = ()
    # whether the built-in model table (proxy/models.py) fills what <models> leaves unset
    builtin_models: bool = True
    # the share of the context window's room kept free for Anthropic requests,
    # whose counts are estimates (Anthropic publishes no tokenizer)
    anthropic_margin: float = 0.2

    def _model_setting(self, model: str, name: str) -> Any:
        """The first value for ``name`` among the <model> entries matching ``model``,
        else the built-in table's."""
        for m in self.models:
            value = getattr(m, name)
            if value is not None and fnmatch.fnmatchcase(model, m.pattern):
                return value
        facts = self.builtin_for(model)
        return None if facts is None else getattr(facts, name, None)

    def builtin_for(self, model: str) -> ModelFacts | None:
        return builtin_facts(model) if self.builtin_models else None

    def encodings(self) -> set[str]:
        """Every encoding a request may be counted with."""
        named = {self.default_encoding, *(m.encoding for m in self.models if m.encoding)}
        return named | ({row.encoding for row in BUILTIN_MODELS} if self.builtin_models else set())

    def encoding_for(self, model: str) -> str:
        return self._model_setting(model, "encoding") or self.default_encoding

    def context_window_for(self, model: str) -> int | None:
        return self._model_setting(model, "context_window")

    def max_output_for(self, model: str) -> int | None:
        """The output a request that names none may get: room kept for it under the window."""
        return self._model_setting(model, "max_output")

    def margin_for(self, model: str, dialect: str) -> float:
        """The share of the window's room kept free because counts are estimates:
        a <model margin>, else anthropic_margin for Anthropic requests and models, else 0."""
        found = self._model_setting(model, "margin")
        if found is not None:
            return found
        facts = self.builtin_for(model)
        anthropic = dialect == "anthropic" or (facts is not None and facts.provider == "anthropic")
        return self.anthropic_margin if anthropic else 0.0

    def low_water_for(self, model: str) -> float:
        found = self._model_setting(model, "low_water")
        return self.low_water if found is None else found


@dataclass(frozen=True)
class ParallelExecution:
    max_workers: int = 4
    task_timeout: float = 300.0
    resource_limit: float = 0.8
    max_tasks: int = 1000


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8788
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections: int = 100
    max_keepalive_connections: int = 100
    # Seconds a client has to send its whole request body (408 after), and
    # seconds a request may wait for one of the max_connections slots (503 after).
    body_timeout: float = 30.0
    slot_timeout: float = 10.0
    # Seconds between checks of the config file for changes; 0 turns polling off
    # (SIGHUP still reloads).
    reload_interval: float = 2.0
    grace_period: float = 30.0
    # Worker processes, or "auto": one with the memory cache backend; with Redis
    # as many as the CPUs this process may use, at most 8 (proxy/workers.py).
    # Each has its own memory cache and coalescing.
    workers: int | Literal["auto"] = "auto"
    # Read HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc for the proxy's
    # credentials) and SSL_CERT_FILE / SSL_CERT_DIR, as other HTTP tools do.
    trust_env: bool = True


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    backend: str = "memory"
    ttl: float = 3600.0
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    # Cache answers of sampled requests (temperature > 0 or unset) too.
    cache_sampled: bool = False
    redis_url: str | None = None
    redis_url_env: str | None = None
    key_prefix: str = "ctxwarden:"
    redis_timeout: float = 0.5
    # Seconds a replica waits for another replica's identical request (Redis
    # backend only); also the cross-replica lock's lifetime. 0: no waiting.
    coalesce_wait: float = 30.0

    def resolved_redis_url(self) -> str | None:
        if self.redis_url_env:
            return os.environ.get(self.redis_url_env) or self.redis_url
        return self.redis_url


@dataclass(frozen=True)
class AdminSettings:
    # Environment variable holding the admin token; unset or empty: no token needed.
    token_env: str | None = None


@dataclass(frozen=True)
class ClientKey:
    """One key clients present to the proxy: its value read from the environment
    variable `env` at start and on reload, or only its SHA-256 (`sha256`, lower-case
    hex) in the file. `name` is what logs call it; never the key."""

    env: str | None = None
    sha256: str | None = None
    name: str | None = None
    line: int | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return self.name or (f"env:{self.env}" if self.env else f"sha256:{(self.sha256 or '')[:8]}")


@dataclass(frozen=True)
class ClientKeys:
    """`<client_keys>`: any key configured, every proxied request and the parallel
    endpoint need one of them (proxy/clientkeys.py). `open_on_loopback` lets an
    upstream with api_key_env serve without client keys, on a loopback address only."""

    keys: tuple[ClientKey, ...] = ()
    open_on_loopback: bool = False
    line: int | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: str = "json"
    requests: bool = True


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 600.0
    write: float = 60.0
    pool: float = 10.0


# What a <retry on> list may name besides status codes: a failed connection
# (refused, reset or closed before any answer, or not made within
# connect_timeout) and a read timeout before the answer's headers.
RETRY_ERRORS = ("connect", "timeout")


@dataclass(frozen=True)
class RetrySettings:
    """`<retry>` of an upstream: how often a failed call to it is repeated
    (proxy/retrying.py). Off by default: the official SDKs already retry."""

    attempts: int = 0
    backoff: float = 0.5
    max_backoff: float = 8.0
    # "429", "5xx", any 4xx/5xx code, "connect", "timeout"; also what makes a fallback take over
    on: tuple[str, ...] = ("429", "5xx", "connect")

    def covers(self, reason: str) -> bool:
        """Whether a failure (a status code's digits, or one of RETRY_ERRORS) is one to retry."""
        return reason in self.on or ("5xx" in self.on and len(reason) == 3 and reason.startswith("5"))


@dataclass(frozen=True)
class Fallback:
    """An upstream tried when the one it belongs to fails in a way its <retry on> names;
    with `model`, only for requests whose model matches that glob."""

    upstream: str
    model: str | None = None

    def serves(self, model: str | None) -> bool:
        return self.model is None or (model is not None and fnmatch.fnmatchcase(model, self.model))


@dataclass(frozen=True)
class Upstream:
    name: str
    dialect: str
    base_url: str
    api_key_env: str | None = None
    model_patterns: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    check_ready: bool = False
    # PEM file of the CAs this upstream's TLS certificate is verified against
    # (a private gateway's); unset: the process's CAs (certifi, or SSL_CERT_FILE).
    ca_bundle: str | None = None
    # Left unset, the dialect's own provider's pricing (set in __post_init__),
    # so an upstream built in code is priced like one read from XML.
    pricing: Pricing = None  # type: ignore[assignment]
    # (model glob, pricing) in config order; the first match wins.
    model_pricing: tuple[tuple[str, Pricing], ...] = ()
    retry: RetrySettings = field(default_factory=RetrySettings)
    # tried in order when this upstream fails as `retry.on` says
    fallbacks: tuple[Fallback, ...] = ()
    # The <upstream> element's line, for config issues found after parsing.
    line: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pricing is None:
            object.__setattr__(self, "pricing", get_dialect(self.dialect).default_pricing)

    def serves_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.model_patterns)

    def pricing_for(self, model: str) -> Pricing:
        """How this upstream bills `model`'s input: the first matching
        `<pricing model>`, else the upstream's default."""
        return next((p for pattern, p in self.model_pricing if fnmatch.fnmatchcase(model, pattern)), self.pricing)


DEFAULT_UPSTREAMS = (
    Upstream(name="openai", dialect="openai", base_url="https://api.openai.com"),
    Upstream(name="anthropic", dialect="anthropic", base_url="https://api.anthropic.com"),
)


@dataclass(frozen=True)
class Config:
    token_management: TokenManagement = field(default_factory=TokenManagement)
    parallel_execution: ParallelExecution = field(default_factory=ParallelExecution)
    server: ServerSettings = field(default_factory=ServerSettings)
    upstreams: tuple[Upstream, ...] = DEFAULT_UPSTREAMS
    admin: AdminSettings = field(default_factory=AdminSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    client_keys: ClientKeys = field(default_factory=ClientKeys)
    source: str = "<default>"

    def describe(self) -> dict:
        """The effective config as JSON, for operators: key variables are named
        with whether they are set, never with their values."""
        described = dataclasses.asdict(self)
        for upstream in described["upstreams"]:
            env = upstream["api_key_env"]
            upstream["api_key"] = None if env is None else ("set" if os.environ.get(env) else "unset")
            del upstream["line"]
        client_keys = described["client_keys"]
        del client_keys["line"]
        client_keys["keys"] = [
            {"name": key.label, "env": key.env, "key": ("set" if os.environ.get(key.env) else "unset")}
            if key.env else {"name": key.label, "sha256": "set"} for key in self.client_keys.keys]
        env = self.admin.token_env
        described["admin"]["token"] = None if env is None else ("set" if os.environ.get(env) else "unset")
        url = self.cache.resolved_redis_url()
        described["cache"]["redis_url"] = None if url is None else redact_url(url)
        return described


def package_file(name: str) -> bytes:
    return resources.files("ctxwarden").joinpath("defaults", name).read_bytes()


_schema: etree.XMLSchema | None = None


def _load_schema() -> etree.XMLSchema:
    global _schema
    if _schema is None:
        _schema = etree.XMLSchema(etree.fromstring(package_file(SCHEMA_NAME), _safe_parser()))
    return _schema


def _safe_parser() -> etree.XMLParser:
    # No entity expansion, no DTD, no network: a config can't read files or
    # call out (XXE, billion laughs).
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        remove_comments=True, remove_pis=True, huge_tree=False,
    )


def default_config_text() -> bytes:
    return package_file(DEFAULT_CONFIG_NAME)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load a config file, or the shipped default when `path` is None."""
    if path is None:
        return parse_config(default_config_text(), source="<embedded default>")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, f"cannot read file: {exc.strerror}")]) from exc
    return parse_config(data, source=str(path))


def parse_config(text: str | bytes, source: str = "<string>") -> Config:
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data, _safe_parser())
    except etree.XMLSyntaxError as exc:
        raise ConfigError([ConfigIssue(source, exc.lineno, f"not well-formed XML: {exc.msg}")]) from exc
    if root.getroottree().docinfo.internalDTD is not None:
        raise ConfigError([ConfigIssue(source, 1, "a DOCTYPE (DTD or entity declarations) is not allowed")])
    if root.tag != "performance_optimization":
        raise ConfigError([ConfigIssue(source, root.sourceline,
                                       f"root element must be <performance_optimization>, not <{root.tag}>")])
    issues = _removed_elements(root, source)
    schema = _load_schema()
    if not schema.validate(root):
        # A removed element's own line already says what replaced it.
        replaced = {issue.line for issue in issues}
        issues += [ConfigIssue(source, e.line, e.message) for e in schema.error_log if e.line not in replaced]
    if issues:
        raise ConfigError(issues)
    return _build(root, source)


# Elements older versions read: refused with what replaced them, not just "not expected".
_REMOVED_ELEMENTS = {
    "token_management/checkpoint": "<checkpoint> was removed: the rewrite compacts only when the budget forces "
                                   "it, priced by each upstream's <pricing>, whose markers attribute replaces "
                                   "anthropic_cache_control",
}


def _removed_elements(root: etree._Element, source: str) -> list[ConfigIssue]:
    return [ConfigIssue(source, node.sourceline, reason)
            for path, reason in _REMOVED_ELEMENTS.items() for node in root.findall(path)]


def _text(parent: etree._Element | None, tag: str) -> str | None:
    if parent is None:
        return None
    child = parent.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _build(root: etree._Element, source: str) -> Config:
    issues: list[ConfigIssue] = []
    tokens = _build_token_management(root.find("token_management"), source, issues)
    parallel = _build_parallel(root.find("parallel_execution"))
    server = _build_server(root.find("server"))
    upstreams = _build_upstreams(root.find("upstreams"), source, issues)
    admin = root.find("admin")
    logging_node = root.find("logging")
    cache = _build_cache(root.find("cache"), source, issues)
    client_keys = _build_client_keys(root.find("client_keys"), source, issues)
    if issues:
        raise ConfigError(issues)
    return Config(tokens, parallel, server, upstreams,
                  admin=AdminSettings(token_env=None if admin is None else admin.get("token_env")),
                  logging=_build_logging(logging_node), cache=cache, client_keys=client_keys, source=source)


def _build_client_keys(node, source: str, issues: list[ConfigIssue]) -> ClientKeys:
    if node is None:
        return ClientKeys()
    keys = []
    for k in node.findall("key"):
        env, digest = k.get("env"), k.get("sha256")
        if (env is None) == (digest is None):
            issues.append(ConfigIssue(source, k.sourceline, "<key> needs exactly one of env (the variable "
                                                            "holding the key) and sha256 (the key's SHA-256)"))
            continue
        keys.append(ClientKey(env=env, sha256=digest.lower() if digest else None, name=k.get("name"),
                              line=k.sourceline))
    return ClientKeys(keys=tuple(keys), open_on_loopback=_bool(node.get("open_on_loopback"), False),
                      line=node.sourceline)


def _build_cache(node, source: str, issues: list[ConfigIssue]) -> CacheSettings:
    d = CacheSettings()
    if node is None:
        return d
    cache = CacheSettings(
        enabled=_bool(node.get("enabled"), d.enabled),
        backend=node.get("backend", d.backend),
        ttl=float(node.get("ttl", d.ttl)),
        max_entries=int(node.get("max_entries", d.max_entries)),
        max_bytes=int(node.get("max_bytes", d.max_bytes)),
        cache_sampled=_bool(node.get("cache_sampled"), d.cache_sampled),
        redis_url=node.get("redis_url"),
        redis_url_env=node.get("redis_url_env"),
        key_prefix=node.get("key_prefix", d.key_prefix),
        redis_timeout=float(node.get("redis_timeout", d.redis_timeout)),
        coalesce_wait=float(node.get("coalesce_wait", d.coalesce_wait)),
    )
    if cache.backend == "redis" and not (cache.redis_url or cache.redis_url_env):
        issues.append(ConfigIssue(source, node.sourceline, "backend=\"redis\" needs redis_url or redis_url_env"))
    return cache


def _xs_bool(value: str) -> bool:
    return value in ("true", "1")


def _bool(value: str | None, default: bool) -> bool:
    return default if value is None else _xs_bool(value)


def _build_logging(node) -> LoggingSettings:
    d = LoggingSettings()
    if node is None:
        return d
    return LoggingSettings(level=node.get("level", d.level), format=node.get("format", d.format),
                           requests=_bool(node.get("requests"), d.requests))


def _build_token_management(node, source: str, issues: list[ConfigIssue]) -> TokenManagement:
    d = TokenManagement()
    if node is None:
        return d
    shares = d.tier_shares
    tiers = node.find("tiers")
    if tiers is not None:
        shares = tuple(int(tiers.get(name, default)) for name, default in
                       zip(("critical", "important", "supporting", "cache"), d.tier_shares))
        if sum(shares) != 100:
            issues.append(ConfigIssue(source, tiers.sourceline,
                                      f"tier shares must add up to 100, they add up to {sum(shares)}"))
    rewrite = node.find("rewrite")
    models_node = node.find("models")
    default_encoding, models = d.default_encoding, d.models
    if models_node is not None:
        default_encoding = models_node.get("default_encoding", d.default_encoding)
        models = tuple(ModelSettings(m.get("pattern"), m.get("encoding"),
                                     _optional(m.get("context_window"), int), _optional(m.get("low_water"), float),
                                     _optional(m.get("max_output"), int), _optional(m.get("margin"), float))
                       for m in models_node.findall("model"))
        _check_encodings(models_node, source, issues)
    margin = _text(node, "anthropic_margin")
    return TokenManagement(
        budget=int(_text(node, "budget") or d.budget),
        compression_threshold=float(_text(node, "compression_threshold") or d.compression_threshold),
        pruning_distance=int(_text(node, "pruning_distance") or d.pruning_distance),
        tier_shares=shares,  # type: ignore[arg-type]
        critical_overflow=_text(node, "critical_overflow") or d.critical_overflow,
        low_water=float(_text(node, "low_water") or d.low_water),
        rewrite_mode=d.rewrite_mode if rewrite is None else rewrite.get("mode", d.rewrite_mode),
        rollout_percent=d.rollout_percent if rewrite is None else int(rewrite.get("rollout", d.rollout_percent)),
        default_encoding=default_encoding,
        models=models,
        builtin_models=d.builtin_models if models_node is None else _bool(models_node.get("builtin"), True),
        anthropic_margin=d.anthropic_margin if margin is None else float(margin),
    )


def _optional(value: str | None, read: Callable[[str], Any]) -> Any:
    return None if value is None else read(value)


def _check_encodings(node, source: str, issues: list[ConfigIssue]) -> None:
    known = set(known_names())
    named = [(node.sourceline, node.get("default_encoding", DEFAULT_ENCODING))]
    named += [(m.sourceline, m.get("encoding")) for m in node.findall("model") if m.get("encoding")]
    for line, name in named:
        if name not in known:
            issues.append(ConfigIssue(source, line, f"unknown tiktoken encoding {name!r}; "
                                                    f"known: {', '.join(sorted(known))}"))


def _build_parallel(node) -> ParallelExecution:
    d = ParallelExecution()
    if node is None:
        return d
    return ParallelExecution(
        max_workers=int(_text(node, "max_workers") or d.max_workers),
        task_timeout=float(_text(node, "task_timeout") or d.task_timeout),
        resource_limit=float(_text(node, "resource_limit") or d.resource_limit),
        max_tasks=int(_text(node, "max_tasks") or d.max_tasks),
    )


def _build_server(node) -> ServerSettings:
    d = ServerSettings()
    if node is None:
        return d
    return ServerSettings(
        host=node.get("host", d.host),
        port=int(node.get("port", d.port)),
        max_body_bytes=int(node.get("max_body_bytes", d.max_body_bytes)),
        max_connections=int(node.get("max_connections", d.max_connections)),
        max_keepalive_connections=int(node.get("max_keepalive_connections", d.max_keepalive_connections)),
        body_timeout=float(node.get("body_timeout", d.body_timeout)),
        slot_timeout=float(node.get("slot_timeout", d.slot_timeout)),
        reload_interval=float(node.get("reload_interval", d.reload_interval)),
        grace_period=float(node.get("grace_period", d.grace_period)),
        workers=_workers(node.get("workers", d.workers)),
        trust_env=_bool(node.get("trust_env"), d.trust_env),
    )


def _ca_bundle(upstream, source: str, issues: list[ConfigIssue]) -> str | None:
    path = upstream.get("ca_bundle")
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        issues.append(ConfigIssue(source, upstream.sourceline, f"ca_bundle {path!r} cannot be used: {exc}"))
    return path


def _workers(value: str) -> int | Literal["auto"]:
    return "auto" if value.strip() == "auto" else int(value)


def _build_upstreams(node, source: str, issues: list[ConfigIssue]) -> tuple[Upstream, ...]:
    if node is None:
        return DEFAULT_UPSTREAMS
    d = Timeouts()
    upstreams = []
    for u in node.findall("upstream"):
        dialect = u.get("dialect")
        pricing, model_pricing = _build_upstream_pricing(u, dialect, source, issues)
        upstreams.append(Upstream(
            name=u.get("name"),
            dialect=dialect,
            base_url=u.get("base_url").rstrip("/"),
            api_key_env=u.get("api_key_env"),
            model_patterns=tuple(m.text.strip() for m in u.findall("model")),
            timeouts=Timeouts(
                connect=float(u.get("connect_timeout", d.connect)),
                read=float(u.get("read_timeout", d.read)),
                write=float(u.get("write_timeout", d.write)),
                pool=float(u.get("pool_timeout", d.pool)),
            ),
            check_ready=_bool(u.get("check_ready"), False),
            ca_bundle=_ca_bundle(u, source, issues),
            pricing=pricing,
            model_pricing=model_pricing,
            retry=_build_retry(u, source, issues),
            fallbacks=tuple(Fallback(f.get("upstream"), f.get("model")) for f in u.findall("fallback")),
            line=u.sourceline,
        ))
    _check_fallbacks(node, upstreams, source, issues)
    return tuple(upstreams)


def _build_retry(upstream, source: str, issues: list[ConfigIssue]) -> RetrySettings:
    nodes = upstream.findall("retry")
    d = RetrySettings()
    if not nodes:
        return d
    for extra in nodes[1:]:
        # The XSD cannot say "at most one" inside the children's free order.
        issues.append(ConfigIssue(source, extra.sourceline, "an upstream has at most one <retry>; "
                                                            f"the first is on line {nodes[0].sourceline}"))
    node = nodes[0]
    retry = RetrySettings(
        attempts=int(node.get("attempts", d.attempts)),
        backoff=float(node.get("backoff", d.backoff)),
        max_backoff=float(node.get("max_backoff", d.max_backoff)),
        on=tuple(node.get("on").split()) if node.get("on") is not None else d.on,
    )
    if retry.max_backoff < retry.backoff:
        issues.append(ConfigIssue(source, node.sourceline, f"<retry>: max_backoff={retry.max_backoff:g} must "
                                                           f"not be less than backoff={retry.backoff:g}"))
    return retry


def _check_fallbacks(node, upstreams: list[Upstream], source: str, issues: list[ConfigIssue]) -> None:
    """Each <fallback> names another upstream of the same dialect, once per upstream."""
    by_name = {u.name: u for u in upstreams}
    for element, upstream in zip(node.findall("upstream"), upstreams):
        seen: set[tuple[str, str | None]] = set()
        for f in element.findall("fallback"):
            name, model = f.get("upstream"), f.get("model")
            other = by_name.get(name)
            if other is None:
                problem = f"names no configured upstream; known: {', '.join(sorted(by_name))}"
            elif other is upstream:
                problem = "names the upstream it belongs to"
            elif other.dialect != upstream.dialect:
                problem = (f"speaks {other.dialect}, not {upstream.dialect} like upstream {upstream.name!r}: "
                           "a fallback gets the same request bytes")
            elif (name, model) in seen:
                problem = "is listed twice"
            else:
                seen.add((name, model))
                continue
            issues.append(ConfigIssue(source, f.sourceline, f"<fallback upstream={name!r}> {problem}"))


# Where an unset <pricing> attribute takes its value from, by the element's @cache.
_CACHE_KIND_DEFAULTS = {"anthropic": ANTHROPIC_PRICING, "openai": OPENAI_PRICING, "none": NO_CACHE_PRICING}

# <pricing> attributes (besides model and cache) and how each one's text is read;
# the names are Pricing's field names.
_PRICING_ATTRIBUTES: dict[str, Callable[[str], object]] = {
    "read": float, "write": float, "ttl": float,
    "min_prefix_tokens": int, "max_breakpoints": int, "lookback_blocks": int,
    "markers": _xs_bool, "prompt_cache_key": _xs_bool,
}


def _build_upstream_pricing(upstream, dialect: str, source: str, issues: list[ConfigIssue],
                            ) -> tuple[Pricing, tuple[tuple[str, Pricing], ...]]:
    """The upstream's default pricing and its per-model ones, in config order."""
    default: Pricing | None = None
    default_line: int | None = None
    per_model: list[tuple[str, Pricing]] = []
    for node in upstream.findall("pricing"):
        pricing = _build_pricing(node, dialect, source, issues)
        if node.get("model") is not None:
            per_model.append((node.get("model").strip(), pricing))
        elif default_line is None:
            default, default_line = pricing, node.sourceline
        else:
            # The XSD cannot say "at most one without @model"; a second would be ignored silently.
            issues.append(ConfigIssue(source, node.sourceline, "an upstream has at most one <pricing> without "
                                                                f"model; the first is on line {default_line}"))
    return default if default is not None else get_dialect(dialect).default_pricing, tuple(per_model)


def _build_pricing(node, dialect: str, source: str, issues: list[ConfigIssue]) -> Pricing:
    kind = node.get("cache")
    base = get_dialect(dialect).default_pricing if kind is None else _CACHE_KIND_DEFAULTS[kind]
    values = {name: read(node.get(name)) for name, read in _PRICING_ATTRIBUTES.items() if node.get(name) is not None}
    # Checked here rather than left to Pricing's own check, which knows no file or line.
    problem = _price_problem(values, base)
    if problem:
        issues.append(ConfigIssue(source, node.sourceline, f"<pricing>: {problem}"))
        # A stand-in, so the rest of the file is still checked; the config is refused anyway.
        return base
    return dataclasses.replace(base, **values)


def _price_problem(values: dict[str, object], base: Pricing) -> str | None:
    """Why the cache read and write prices (fractions of an uncached token) cannot
    be billed, or None.  `values` are the attributes set, `base` gives the rest."""
    read, write = values.get("read", base.read), values.get("write", base.write)

    def named(name: str, value: float) -> str:
        # A default in the message is named as one, or the user looks for it in the file.
        return f"{name}={value:g}" + ("" if name in values else f" (the cache=\"{base.cache}\" default)")

    if read < 0:
        return f"{named('read', read)} must not be negative"
    if write <= 0:
        return f"{named('write', write)} must be more than 0"
    if read > write:
        return f"{named('read', read)} must not be more than {named('write', write)}"
    return None
