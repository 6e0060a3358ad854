"""Provisioner sites: a named driver with its boot timeout, built from the settings.

``provisioner.driver`` is the driver of the ``default`` site (used by engines that
name no ``site``); ``provisioner.sites`` defines named sites, each with its own
``driver`` and options (:class:`~pdcommon.settings.LocalSiteSettings`,
:class:`~pdcommon.settings.LibcloudSiteSettings`,
:class:`~pdcommon.settings.StaticSiteSettings`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import Driver, SupervisordStopper, owner_id
from pdcommon.settings import (
    DEFAULT_SITE,
    LibcloudSiteSettings,
    LocalSiteSettings,
    Settings,
    SiteSettings,
)

__all__ = ["Site", "build_sites", "make_driver"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    """One provisioner site.

    Attributes:
        name: its name (``default`` or a key of ``provisioner.sites``).
        driver: the driver that creates its nodes.
        boot_timeout: seconds a new node has to register an agent before it is
            destroyed and replaced (``None``: no limit).
    """

    name: str
    driver: Driver
    boot_timeout: float | None = None


def make_driver(
    name: str,
    site: SiteSettings,
    settings: Settings,
    *,
    template: AgentTemplate | None = None,
    connection: Any = None,
    stop_supervisord: SupervisordStopper | None = None,
) -> Site:
    """The site ``name`` with its driver.

    Args:
        name: the site's name.
        site: its typed settings.
        settings: the dispatcher's settings (state directory, broker, names).
        template: the agents' template (default: from ``settings``).
        connection: a Libcloud ``NodeDriver`` to use (tests).
        stop_supervisord: what a ``local`` site stops an agent's leftover
            supervisord with (see :class:`~dispatcher.provisioner.local.LocalDriver`).

    Raises:
        ConfigError: the site cannot work as configured.
    """
    template = template or AgentTemplate.from_settings(settings)
    owner = owner_id(settings.processdispatcher.service_name, settings.dashi.sysname)
    if isinstance(site, LocalSiteSettings):
        from dispatcher.provisioner.local import LocalDriver

        local = LocalDriver(
            site,
            template=template,
            state_dir=settings.state_dir,
            owner=owner,
            site_name=name,
            stop_supervisord=stop_supervisord,
        )
        return Site(name, local, site.boot_timeout)
    if isinstance(site, LibcloudSiteSettings):
        from dispatcher.provisioner.libcloud import LibcloudDriver

        cloud = LibcloudDriver(
            site, template=template, owner=owner, site_name=name, connection=connection
        )
        return Site(name, cloud, site.boot_timeout)
    from dispatcher.provisioner.static import StaticDriver

    return Site(name, StaticDriver(), None)


def build_sites(
    settings: Settings,
    *,
    template: AgentTemplate | None = None,
    connections: Mapping[str, Any] | None = None,
    stop_supervisord: SupervisordStopper | None = None,
) -> dict[str, Site]:
    """Every site of ``settings``: ``default`` plus each ``provisioner.sites`` entry.

    A ``default`` site that cannot be built (``driver: libcloud`` without
    ``sites.default``) is left out with a warning when no engine needs it.

    Raises:
        ConfigError: a site an engine names cannot be built.
        ValueError: a site's options are invalid, or an engine names an unknown site.
    """
    provisioner = settings.provisioner
    used = {engine.site or DEFAULT_SITE for engine in settings.processdispatcher.engines.values()}
    sites: dict[str, Site] = {}
    for name in sorted({DEFAULT_SITE, *provisioner.sites, *used}):
        if name not in provisioner.sites and name != DEFAULT_SITE:
            raise ValueError(f"an engine names provisioner site {name!r}, which is not configured")
        try:
            typed = provisioner.site(name)
        except ValueError:
            if name == DEFAULT_SITE and name not in used:
                log.warning("no default provisioner site: engines added later cannot get nodes")
                continue
            raise
        sites[name] = make_driver(
            name,
            typed,
            settings,
            template=template,
            connection=(connections or {}).get(name),
            stop_supervisord=stop_supervisord,
        )
    return sites
