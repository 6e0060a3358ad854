"""Client library quick start: definitions and processes through ``ProcessDispatcherClient``.

Run it against a running dispatcher, configured the way ``pd-cli`` is (``--config``
files, then ``PD_AMQP_URI`` / ``PD_STATE_DIR``; with nothing set, the local
dispatcher on the embedded defaults)::

    pd-dispatcher &
    python docs/examples/client_quickstart.py [--config FILE]

It prints each step and exits 0; a test runs it against a real ``pd-dispatcher``.
"""

from __future__ import annotations

import argparse

from dashi.errors import BadRequestError, NotFoundError
from dispatcher.client import ProcessDispatcherClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], metavar="FILE")
    options = parser.parse_args()

    with ProcessDispatcherClient.from_environment(options.config) as pd:
        # A definition says what to run; processes refer to it by id.
        pd.create_definition("quickstart-sleeper", "supd", {"exec": "/bin/sleep", "argv": ["60"]})
        print("definitions:", pd.list_definitions())

        # schedule_process creates and requests a process in one call (round 0) ...
        process = pd.schedule_process(
            "quickstart-1",
            "quickstart-sleeper",
            restart_mode="NEVER",
            subscribers=[["my_service", "process_changed"]],
        )
        print("scheduled:", process["upid"], process["state"], "round", process["round"])

        # ... and repeating the same request is harmless (idempotent).
        again = pd.schedule_process(
            "quickstart-1",
            "quickstart-sleeper",
            restart_mode="NEVER",
            subscribers=[["my_service", "process_changed"]],
        )
        print("scheduled again:", again["upid"], "round", again["round"])

        # A different request for a process in play is refused with a typed error.
        try:
            pd.schedule_process("quickstart-1", restart_mode="ALWAYS")
        except BadRequestError as exc:
            print("refused:", exc.exc_type)

        record = pd.describe_process("quickstart-1")
        assert record is not None
        print("described:", record["upid"], record["state"], record["subscribers"])

        terminated = pd.terminate_process("quickstart-1")
        print("terminated:", terminated["upid"], terminated["state"])

        try:
            pd.terminate_process("no-such-process")
        except NotFoundError as exc:
            print("not found:", exc.exc_type)

        pd.remove_definition("quickstart-sleeper")
        print("definitions:", pd.list_definitions())


if __name__ == "__main__":
    main()
