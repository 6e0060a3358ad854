"""The roles of the dispatcher's operations (see :mod:`pdcommon.auth`).

Kept apart from the access guard, so that the request models that declare their
role load no broker library.
"""

from __future__ import annotations

import enum

__all__ = ["OperationRole"]


class OperationRole(enum.Enum):
    """The least role an operation needs (``AGENT``: agents only)."""

    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"
    AGENT = "agent"

    def allows(self, needed: OperationRole) -> bool:
        """Whether a principal of this role may call an operation needing ``needed``."""
        if needed is OperationRole.AGENT or self is OperationRole.AGENT:
            return self is needed
        return _RANK[self] >= _RANK[needed]


_RANK = {OperationRole.READER: 0, OperationRole.OPERATOR: 1, OperationRole.ADMIN: 2}
