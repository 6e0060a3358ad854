"""Launch parameters of the ``supd`` run type, and program naming.

The dispatcher sends a process definition's ``executable`` unchanged as
``launch_process``'s ``parameters``::

    exec: /usr/bin/python3          # required: a path, or a name looked up on PATH
    argv: ["-m", "http.server"]     # optional list, executed without a shell
    working_directory: /srv/app     # optional absolute path (default: supd_directory)
    env: {PORT: "8000"}             # optional; added to the inherited environment
    user: www-data                  # optional; needs an agent running as root

Numbers in ``argv`` and ``env`` are taken as their decimal text, as a YAML author
expects. Other keys are ignored, as the legacy agent did. Anything invalid becomes
a :class:`ParameterError` whose message ends up in the process's ``msg``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eeagent.control import ProgramSpec
from eeagent.errors import EEAgentError

__all__ = ["ParameterError", "SupdParameters", "parse_parameters", "program_name"]

#: POSIX portable environment variable names.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Conventional account names (useradd's default NAME_REGEX, a bit wider).
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
#: upids that can be used as they are in a supervisord program name.
_PLAIN_UPID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
#: Characters no argument, variable or path can carry: NUL (execve) and carriage
#: return (supervisord reads its configuration with universal newlines).
_UNPASSABLE = re.compile(r"[\x00\r]")


class ParameterError(EEAgentError, ValueError):
    """The launch parameters are invalid; the message says which and why."""


def _check_text(value: str, what: str) -> str:
    if _UNPASSABLE.search(value):
        raise ValueError(f"{what} contains a NUL or carriage return")
    return value


class SupdParameters(BaseModel):
    """The validated ``parameters`` of a ``supd`` launch."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)

    exec: str = Field(min_length=1)
    argv: list[str] = Field(default_factory=list)
    working_directory: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None

    @field_validator("exec")
    @classmethod
    def _exec(cls, value: str) -> str:
        return _check_text(value, "exec")

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        for index, arg in enumerate(value):
            _check_text(arg, f"argv[{index}]")
        return value

    @field_validator("working_directory")
    @classmethod
    def _working_directory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_text(value, "working_directory")
        if not value.startswith("/"):
            raise ValueError("working_directory must be an absolute path")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env name {name!r} is not a valid variable name")
            _check_text(text, f"env {name}")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_NAME.fullmatch(value):
            raise ValueError(f"user {value!r} is not a valid account name")
        return value

    def spec(
        self, name: str, default_directory: str | None, default_user: str | None = None
    ) -> ProgramSpec:
        """The :class:`ProgramSpec` that runs these parameters as program ``name``.

        Args:
            name: the program name.
            default_directory: the working directory when the parameters name none.
            default_user: the account when the parameters name none (the agent's
                ``eeagent.default_user``).
        """
        return ProgramSpec(
            name=name,
            argv=(self.exec, *self.argv),
            env=dict(self.env),
            working_directory=self.working_directory or default_directory,
            user=self.user or default_user,
        )


def parse_parameters(parameters: Any) -> SupdParameters:
    """Validate a ``supd`` launch's ``parameters``.

    Raises:
        ParameterError: with a one-line reason naming the offending key.
    """
    if not isinstance(parameters, dict):
        raise ParameterError(
            f"parameters must be a mapping with at least 'exec', not {type(parameters).__name__}"
        )
    try:
        return SupdParameters.model_validate(parameters)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "parameters"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ParameterError(f"invalid parameters: {where}: {message}") from None


def program_name(upid: str, round: int) -> str:
    """The supervisord program name of ``(upid, round)``: ``<upid>-<round>``.

    A upid with characters supervisord or its configuration file cannot carry
    (anything outside ``[A-Za-z0-9_.-]``, or longer than 100) is replaced by a
    stable digest, so every upid maps to a valid, unique name.
    """
    if _PLAIN_UPID.fullmatch(upid):
        return f"{upid}-{round}"
    digest = hashlib.sha256(upid.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"u{digest}-{round}"
