"""A cloud whose VMs really boot: moto's EC2 API, and each instance's user-data run
in a clean Debian root file system the way cloud-init runs a user-data script.

* :func:`debian_root` builds (once, cached between runs) a Debian root with
  ``debootstrap --variant=minbase --include=python3,python3-venv`` from Debian's
  mirror. The cache is ``$PD_TEST_ROOT_CACHE`` or ``/var/cache/pd-test-root``,
  one directory per hash of the build inputs (suite, mirror, packages); a file
  lock makes concurrent sessions build it once.
* :func:`wheelhouse` holds the wheels the node installs from: this checkout's
  own wheel (built for the session) and its dependencies (``pip wheel``, cached
  by the hash of ``setup.cfg``): the node needs no network.
* :class:`ChrootVM` is one VM: a copy of the root (with the wheelhouse in
  ``/opt/pd-wheels``, as an image would carry it) in which the user-data is
  written to ``/var/lib/cloud/instance/user-data.txt`` (0700) and executed as
  root, in a PID and mount namespace of its own (``unshare``), chrooted, with
  ``/dev``, ``/proc`` and a ``/run`` tmpfs mounted, sharing the host's network
  so that 127.0.0.1 reaches the test broker. Its init then sleeps; stopping the
  VM kills that init, which ends every process of the namespace.
* :class:`BootingCloud` watches moto for instances: a ``running`` one gets a VM
  booted from its user-data, a terminated one has its VM stopped.

Everything needs root (``unshare``, ``mount``, ``chroot``), ``debootstrap``
(``scripts/test.sh`` installs it) and Debian's mirror on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUITE = "bookworm"
MIRROR = os.environ.get("PD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv")
#: Bump when the way the root is built changes.
ROOT_FORMAT = "1"
CHECKOUT = Path(__file__).resolve().parents[2]
USER_DATA = "/var/lib/cloud/instance/user-data.txt"
WHEELS_IN_VM = "/opt/pd-wheels"
#: What a wheel is not built from.
_NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")

#: What runs inside the new namespaces: mount, chroot, run the user-data, then idle.
_VM_INIT = r"""
set -e
root=$1
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 chroot "$root" /bin/sh -c '
    echo "vm: running user-data"
    status=0
    "$0" || status=$?
    echo "vm: user-data exited with status $status"
    exec sleep infinity
' "$2"
"""


def cache_dir() -> Path:
    return Path(os.environ.get("PD_TEST_ROOT_CACHE", "/var/cache/pd-test-root"))


def missing_reason() -> str | None:
    """Why VMs cannot be booted here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "booting a VM root needs root (unshare, mount, chroot)"
    for tool in ("debootstrap", "unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/test.sh installs debootstrap)"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def debian_root(log: Callable[[str], None] = print) -> Path:
    """The cached Debian root (built on first use); callers copy it, never change it."""
    key = _key(ROOT_FORMAT, SUITE, MIRROR, *PACKAGES)
    root = cache_dir() / f"root-{SUITE}-{key}"
    with _locked(cache_dir() / f"root-{key}.lock"):
        if (root / "usr/bin/python3").exists():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        log(f"building the Debian root {root} (debootstrap {SUITE}, minbase + {PACKAGES})")
        started = time.monotonic()
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(
                f"debootstrap failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        # apt's package lists and archives are not needed by a VM.
        shutil.rmtree(partial / "var/cache/apt/archives", ignore_errors=True)
        partial.rename(root)
        log(f"built the Debian root in {time.monotonic() - started:.1f}s")
    return root


def wheelhouse(session_dir: Path) -> Path:
    """A directory of the wheels a node installs the project from (no network needed)."""
    spec = (CHECKOUT / "setup.cfg").read_text() + (CHECKOUT / "pyproject.toml").read_text()
    deps = cache_dir() / f"wheels-py{sys.version_info[0]}{sys.version_info[1]}-{_key(spec)}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet"]
    with _locked(cache_dir() / f"{deps.name}.lock"):
        if not deps.is_dir():
            partial = deps.with_name(deps.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run([*pip, "-w", str(partial), str(_source(session_dir))], check=True)
            for wheel in partial.glob("process_dispatcher-*.whl"):
                wheel.unlink()
            partial.rename(deps)
    house = session_dir / "wheelhouse"
    if not house.is_dir():
        shutil.copytree(deps, house)
        subprocess.run([*pip, "--no-deps", "-w", str(house), str(_source(session_dir))], check=True)
    return house


def _source(session_dir: Path) -> Path:
    """A copy of the checkout's sources to build from (the build leaves ``build/`` there)."""
    source = session_dir / "source"
    if not source.is_dir():
        shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCES))
    return source


def processes_in(root: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose root directory is ``root``."""
    found = []
    target = str(root.resolve())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/root") != target:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry.name), cmdline))
    return found


class ChrootVM:
    """One VM: a copy of the Debian root that boots a user-data script (module docstring)."""

    def __init__(self, base: Path, root: Path, wheels: Path) -> None:
        self.root = root
        self.console = root.with_name(root.name + ".console.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self.boots: list[float] = []
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
        shutil.copytree(wheels, root / WHEELS_IN_VM.lstrip("/"))

    def boot(self, user_data: str) -> None:
        """Write the user-data and run it as cloud-init does (an executable, as root)."""
        path = self.root / USER_DATA.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(user_data)
        path.chmod(0o700)
        self.boots.append(time.time())
        with open(self.console, "ab") as console:
            self._proc = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--kill-child",
                    "sh",
                    "-c",
                    _VM_INIT,
                    "vm",
                    str(self.root),
                    USER_DATA,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Power off: kill the namespace's init (every process in it dies with it)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout)
            self._proc = None
        deadline = time.monotonic() + timeout
        while processes_in(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)

    def reboot(self) -> None:
        user_data = (self.root / USER_DATA.lstrip("/")).read_text()
        self.stop()
        self.boot(user_data)

    def processes(self) -> list[tuple[int, str]]:
        return processes_in(self.root)

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


class BootingCloud:
    """Boots a :class:`ChrootVM` for each instance moto runs, stops it when terminated."""

    def __init__(self, endpoint: str, base: Path, wheels: Path, directory: Path) -> None:
        import boto3

        self.ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="example-secret",
        )
        self.base = base
        self.wheels = wheels
        self.directory = directory
        self.vms: dict[str, ChrootVM] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="booting-cloud", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._lock:
            for vm in self.vms.values():
                vm.stop()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._look()
            except Exception as exc:  # reported by the test through cloud.errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.2)

    def _look(self) -> None:
        reservations = self.ec2.describe_instances()["Reservations"]
        states = {
            instance["InstanceId"]: instance["State"]["Name"]
            for reservation in reservations
            for instance in reservation["Instances"]
        }
        for instance_id, state in states.items():
            with self._lock:
                vm = self.vms.get(instance_id)
            if state == "running" and vm is None:
                self._boot(instance_id)
            elif state in ("shutting-down", "terminated", "stopped") and vm and vm.running:
                vm.stop()

    def _boot(self, instance_id: str) -> None:
        import base64

        attribute = self.ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
        vm = ChrootVM(self.base, self.directory / instance_id, self.wheels)
        with self._lock:
            self.vms[instance_id] = vm
        vm.boot(user_data)
