"""The user-data a ``libcloud`` node boots from: a POSIX shell script run as root.

cloud-init runs a user-data document that starts with ``#!`` as a script, once
per instance (``scripts-user``); so does any image that runs user-data at boot.
The script (:func:`build_user_data`):

1. sends everything it prints to :data:`BOOT_LOG` (mode 0600; no secret is ever
   printed) and checks for ``python3`` >= :data:`MIN_PYTHON`;
2. writes each agent's configuration (broker URI with its credentials, HMAC key)
   to ``/etc/process-dispatcher/<agent>.yml``, mode 0600 in a 0700 directory
   owned by root: no other user of the VM can read a secret;
3. runs ``setup_commands`` and ``install_command`` unless an earlier run
   finished them (marker ``<agent_state_dir>/installed``): a reboot, or a second
   run, installs nothing twice;
4. starts one agent per name: a systemd unit ``pd-eeagent@<agent>`` (restarted
   by systemd, started again at reboot) when systemd runs, else a detached
   process with a pid file (containers, a chroot) that is not started twice;
5. writes ``ok`` to ``<agent_state_dir>/boot-status``.

Failures are loud: a failing step ends the script with that step's exit status
after writing ``failed: <step> (exit status N)`` to the boot log, to the script's original
standard error (cloud-init copies it to the console, which the provider shows)
and to ``boot-status``; the node then never heartbeats, and the provisioner
replaces it at the site's ``boot_timeout``.
"""

from __future__ import annotations

import base64
import shlex

import yaml

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest
from pdcommon.settings import LibcloudSiteSettings

__all__ = ["AGENT_CONFIG_DIR", "BOOT_LOG", "MIN_PYTHON", "build_user_data"]

#: Where the agents' configuration files go on the VM.
AGENT_CONFIG_DIR = "/etc/process-dispatcher"
#: The boot script's log on the VM.
BOOT_LOG = "/var/log/process-dispatcher-boot.log"
#: The oldest ``python3`` the node can run the agent with (the project's own minimum).
MIN_PYTHON = (3, 11)

_HEADER = """\
#!/bin/sh
# Process Dispatcher node boot script (user-data). Run as root, by cloud-init or
# by hand; running it again installs nothing twice and starts no agent twice.
# Needs /bin/sh and python3 >= {major}.{minor}. Log: {log}
set -eu
umask 077
PD_CONF={conf}
PD_STATE={state}
PD_LOG={log}
exec 3>&2
mkdir -p "$(dirname "$PD_LOG")"
: >>"$PD_LOG"
chmod 600 "$PD_LOG"
exec >>"$PD_LOG" 2>&1
step=start
finish() {{
    status=$?
    if [ "$status" -ne 0 ]; then
        message="failed: $step (exit status $status)"
        echo "pd-node-boot: $message"
        echo "pd-node-boot: $message; see $PD_LOG" >&3
        mkdir -p "$PD_STATE" && echo "$message" >"$PD_STATE/boot-status"
    fi
}}
trap finish EXIT
echo "pd-node-boot: started $(date -u '+%Y-%m-%dT%H:%M:%SZ') for node {node_id}"
mkdir -p "$PD_CONF" "$PD_STATE"
chmod 700 "$PD_CONF" "$PD_STATE"
rm -f "$PD_STATE/boot-status"

step="python3 >= {major}.{minor}"
command -v python3 >/dev/null
python3 -c 'import sys; sys.exit(sys.version_info < ({major}, {minor}))'

step="write the agents' configuration"
write_config() {{  # write_config <path> <base64 content>: mode 0600, replaced atomically
    printf '%s' "$2" | python3 -c \\
        'import base64, sys; sys.stdout.buffer.write(base64.b64decode(sys.stdin.read()))' \\
        >"$1.tmp"
    chmod 600 "$1.tmp"
    mv -f "$1.tmp" "$1"
}}
"""

_INSTALL = """
if [ -e "$PD_STATE/installed" ]; then
    echo "pd-node-boot: already installed; not installing again"
else
{commands}
    touch "$PD_STATE/installed"
    echo "pd-node-boot: installed"
fi
"""

_START = """
step="start the agents"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    umask 022
    cat >/etc/systemd/system/pd-eeagent@.service <<'PD_UNIT'
[Unit]
Description=Process Dispatcher agent %i
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/env {agent} --config {conf}/%i.yml --name %i
Restart=always
RestartSec=5
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
PD_UNIT
    umask 077
    systemctl daemon-reload
    for name in {names}; do
        systemctl enable --now "pd-eeagent@$name"
    done
else
    # No systemd (a container, a chroot): detached processes with pid files.
    for name in {names}; do
        pidfile="$PD_STATE/$name.pid"
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "pd-node-boot: agent $name runs already"
            continue
        fi
        setsid {agent} --config "$PD_CONF/$name.yml" --name "$name" \\
            </dev/null >>"$PD_STATE/$name.log" 2>&1 &
        echo $! >"$pidfile"
        echo "pd-node-boot: started agent $name (pid $!)"
    done
fi
echo ok >"$PD_STATE/boot-status"
echo "pd-node-boot: done"
"""


def build_user_data(
    site: LibcloudSiteSettings, template: AgentTemplate, request: NodeRequest
) -> str:
    """The boot script of ``request``'s node (module docstring).

    Secrets (broker credentials, HMAC key) appear only base64-encoded inside the
    configuration the script writes with mode 0600; the script prints none.
    """
    heartbeat = site.agent_heartbeat or request.heartbeat
    state = site.agent_state_dir
    parts = [
        _HEADER.format(
            major=MIN_PYTHON[0],
            minor=MIN_PYTHON[1],
            log=shlex.quote(BOOT_LOG),
            conf=shlex.quote(AGENT_CONFIG_DIR),
            state=shlex.quote(state),
            node_id=request.node_id,
        )
    ]
    for name in request.agent_names:
        config = template.config(
            agent_name=name,
            state_dir=state,
            supd_directory=f"{state}/eeagent",
            node_id=request.node_id,
            slots=request.slots,
            heartbeat=heartbeat,
        )
        encoded = base64.b64encode(yaml.safe_dump(config, sort_keys=False).encode()).decode()
        path = shlex.quote(f"{AGENT_CONFIG_DIR}/{name}.yml")
        parts.append(f"write_config {path} {encoded}\n")
    commands = []
    for index, command in enumerate(site.setup_commands):
        commands.append(f'    step="setup command {index + 1}"\n    {command}')
    commands.append(f'    step="install"\n    {site.install_command}')
    parts.append(_INSTALL.format(commands="\n".join(commands)))
    names = " ".join(shlex.quote(name) for name in request.agent_names)
    parts.append(_START.format(agent=site.agent_command, conf=AGENT_CONFIG_DIR, names=names))
    return "".join(parts)
