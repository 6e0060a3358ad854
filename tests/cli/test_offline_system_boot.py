"""``pd-dispatcher system-boot begin|end|status``: offline, no broker needed."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from dispatcher.leadership import lock_for_database
from dispatcher.store.sql import SqlStore


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(pd_dispatcher, ["--config", str(config), *args])
    return result.exit_code, result.output


def config_for(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path}/pd.db"
    config = tmp_path / "dispatcher.yml"
    config.write_text(yaml.safe_dump({"processdispatcher": {"database_url": url}}))
    return config, url


def test_begin_end_and_status_on_a_database_no_dispatcher_uses(tmp_path: Path) -> None:
    config, url = config_for(tmp_path)
    code, output = invoke(config, "system-boot", "status")
    assert code == 0, output
    assert "state: UNINITIALIZED" in output and "system boot: off" in output
    code, output = invoke(config, "system-boot", "begin")
    assert code == 0, output
    assert "boot initialisation pending" in output and "system boot: on" in output
    store = SqlStore(url)
    try:
        assert store.is_system_boot() and store.is_boot_init_pending()
    finally:
        store.close()
    code, output = invoke(config, "system-boot", "end")
    assert code == 0, output
    assert "system boot: off" in output
    assert "held back: 0" in output


def test_begin_and_end_are_refused_while_a_dispatcher_leads(tmp_path: Path) -> None:
    config, url = config_for(tmp_path)
    assert invoke(config, "system-boot", "status")[0] == 0  # creates the database
    # Given a dispatcher holding the database's leadership lock
    lock = lock_for_database(url)
    assert lock.try_acquire()
    try:
        for action in ("begin", "end"):
            # When a boot is begun or ended offline
            code, output = invoke(config, "system-boot", action)
            # Then it is refused with one line, exit 1, and nothing is written
            assert code == 1, output
            assert output.startswith("Error: a dispatcher is running on sqlite:///")
            assert "Traceback" not in output
        store = SqlStore(url)
        try:
            assert not store.is_system_boot() and not store.is_boot_init_pending()
        finally:
            store.close()
        # while status still reads the database
        assert invoke(config, "system-boot", "status")[0] == 0
    finally:
        lock.release()
