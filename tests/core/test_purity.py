"""The core is pure: it imports no broker, database or cloud library (style guideline 1)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_loads_no_kombu_sqlalchemy_or_libcloud() -> None:
    # Given a fresh interpreter
    # When the core modules are imported
    code = (
        "import sys\n"
        "import dispatcher.core, dispatcher.transitions, dispatcher.requests, dispatcher.messaging\n"
        "import dispatcher.replay\n"
        "print(sorted(m for m in ('kombu', 'sqlalchemy', 'libcloud') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    # Then none of the adapters' libraries is loaded
    assert out.strip() == "[]"
