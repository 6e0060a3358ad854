"""Execution engines: the kinds of agent a process can run on, and which one it uses.

Engines come from ``processdispatcher.engines`` (legacy keys, see
:class:`~pdcommon.settings.EngineSettings`) and from the ``add_engine`` RPC, whose
engines are persisted in the store so every dispatcher instance and every restart
sees them.

A process's engine is, in order (as in the legacy system):

1. ``constraints["engine"]`` when it is not ``None`` (``execution_engine_id`` puts it
   there);
2. the ``process_engines`` mapping on ``executable.module + "." + executable.class``,
   trying the full path and then shorter dotted prefixes (longest prefix wins);
3. the default engine.

The result is never written back into the stored constraints, so repeating an
identical ``schedule_process`` stays idempotent (docs/architecture.md, decision 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from dashi.errors import BadRequestError, WriteConflictError
from pdcommon.errors import ConfigError
from pdcommon.limits import DEFAULT_LIMITS, LimitError, check_arguments
from pdcommon.settings import EngineSettings, ProcessDispatcherSettings

__all__ = ["DOMAIN_PREFIX", "EngineRegistry", "engine_id_from_domain"]

#: Legacy EPUM domain naming: one domain per engine.
DOMAIN_PREFIX = "pd_domain_"
#: ``add_engine`` defaults differ from configuration ones in the legacy system; here
#: both enable heartbeat monitoring (docs/architecture.md, decision 3), so one set of
#: defaults serves both.
_ADD_ENGINE_KEYS = frozenset(EngineSettings.model_fields) - {"site"} | {"engine_id"}


def engine_id_from_domain(domain_id: str | None) -> str | None:
    """``pd_domain_<engine>`` → ``<engine>``; anything else → ``None``."""
    if domain_id and domain_id.startswith(DOMAIN_PREFIX) and len(domain_id) > len(DOMAIN_PREFIX):
        return domain_id[len(DOMAIN_PREFIX) :]
    return None


class EngineRegistry:
    """The engines one dispatcher knows, and the engine-selection rules.

    Args:
        engines: engine id → settings.
        default_engine: the default engine id (``None``: no default).
        process_engines: ``"dotted.module[.Class]"`` → engine id.

    Raises:
        ConfigError: the default engine or a mapping names an unknown engine.
    """

    def __init__(
        self,
        engines: Mapping[str, EngineSettings],
        default_engine: str | None = None,
        process_engines: Mapping[str, str] | None = None,
    ) -> None:
        self._engines = dict(engines)
        if default_engine is not None and default_engine not in self._engines:
            raise ConfigError(f"default_engine {default_engine!r} is not among the engines")
        self.default_engine = default_engine
        self.process_engines = dict(process_engines or {})
        for path, engine_id in self.process_engines.items():
            if not path:
                raise ConfigError("process_engines has an empty module path")
            if engine_id not in self._engines:
                raise ConfigError(f"process_engines maps {path!r} to unknown engine {engine_id!r}")

    @classmethod
    def from_settings(cls, settings: ProcessDispatcherSettings) -> EngineRegistry:
        return cls(settings.engines, settings.effective_default_engine, settings.process_engines)

    # -- lookup -------------------------------------------------------------------

    def __contains__(self, engine_id: object) -> bool:
        return engine_id in self._engines

    def __iter__(self) -> Iterator[str]:
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def get(self, engine_id: str) -> EngineSettings | None:
        return self._engines.get(engine_id)

    def items(self) -> list[tuple[str, EngineSettings]]:
        return list(self._engines.items())

    # -- run-time additions -----------------------------------------------------------

    @staticmethod
    def parse_definition(definition: Any) -> tuple[str, EngineSettings]:
        """Validate an ``add_engine`` definition.

        Raises:
            BadRequestError: not a dict, no ``engine_id``/``slots``, an unknown key, a
                bad value (the message names it), or past the request limits (depth
                and size, :data:`pdcommon.limits.DEFAULT_LIMITS`).
        """
        if not isinstance(definition, dict):
            raise BadRequestError("Definition must be a dict")
        try:
            check_arguments({"definition": definition}, DEFAULT_LIMITS)
        except LimitError as exc:
            raise BadRequestError(f"invalid {exc}") from None
        if not definition.get("engine_id") or not isinstance(definition["engine_id"], str):
            raise BadRequestError("Definition must have an 'engine_id'")
        if "slots" not in definition:
            raise BadRequestError("Definition must have 'slots'")
        unknown = sorted(set(definition) - _ADD_ENGINE_KEYS)
        if unknown:
            raise BadRequestError(f"Definition has unknown key(s): {', '.join(unknown)}")
        spec = {key: value for key, value in definition.items() if key != "engine_id"}
        try:
            return definition["engine_id"], EngineSettings.model_validate(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "definition"
            raise BadRequestError(f"invalid engine {where}: {first['msg']}") from None

    def add(self, engine_id: str, engine: EngineSettings) -> None:
        """Add an engine; an existing id raises ``WriteConflictError``."""
        if engine_id in self._engines:
            raise WriteConflictError(f"engine {engine_id!r} already exists")
        self._engines[engine_id] = engine

    def merge_stored(self, stored: Mapping[str, Mapping[str, Any]]) -> None:
        """Add engines persisted by ``add_engine`` that this registry lacks."""
        for engine_id, spec in stored.items():
            if engine_id not in self._engines:
                self._engines[engine_id] = EngineSettings.model_validate(dict(spec))

    # -- selection ----------------------------------------------------------------

    def engine_for_module(self, module: str | None, cls: str | None) -> str | None:
        """The ``process_engines`` match for ``module.cls`` (longest prefix), or ``None``."""
        if not self.process_engines or not module or not cls:
            return None
        path = f"{module}.{cls}"
        while path:
            engine_id = self.process_engines.get(path)
            if engine_id is not None:
                return engine_id
            path = path.rpartition(".")[0]
        return None

    def engine_for_process(
        self, constraints: Mapping[str, Any] | None, definition: Mapping[str, Any] | None
    ) -> str | None:
        """The engine a process runs on (see the module docstring)."""
        if constraints and constraints.get("engine") is not None:
            return str(constraints["engine"])
        executable = (definition or {}).get("executable")
        if isinstance(executable, Mapping):
            mapped = self.engine_for_module(executable.get("module"), executable.get("class"))
            if mapped is not None:
                return mapped
        return self.default_engine

    def effective_constraints(
        self, constraints: Mapping[str, Any] | None, definition: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """A copy of ``constraints`` with ``engine`` filled in (never stored)."""
        result = dict(constraints or {})
        engine_id = self.engine_for_process(constraints, definition)
        if engine_id is not None:
            result["engine"] = engine_id
        return result
