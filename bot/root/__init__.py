"""The composition root: the one place where every long-lived object is built, and closed.

Built once, in this order: settings (given), engine, store, clock, the Slack client, the use
cases and the one reconciler (with Slack's thread probe when Slack is wired, and on PostgreSQL
an advisory lock across replicas), the listener for other processes' commits (PostgreSQL),
outbox delivery, the reply inbox, the Bolt app and its gateway, the agent runner and its
models, the MCP app, the scheduler and the HTTP server. They are closed in reverse order. The
service, the CLI, tests and benchmarks all get their objects here, with ``Overrides`` for the
clock, keys, pacing and ports; nothing else rebuilds this wiring.

One root, in five modules, imported from here:

- ``core``: ``Overrides``, ``Core``, ``build_core``, ``open_core``, ``build_reconciler``, the
  migrations and the agent secrets' key and checks;
- ``slack``: the Slack adapter as wired around the core (``Slack``) and its settings check;
- ``server``: the HTTP surface (health, metrics, Slack's events, the MCP endpoint);
- ``service``: ``Service`` and ``open_service``, which builds and starts it all in order, with
  the agent runner and its models (``channels.models``);
- ``serve``: ``serve`` until a signal, the start-up freeze and the stdio bridge.

This is the only package under ``bot/`` that imports ``channels``, ``store`` or ``scheduler``
(but for ``bot/cli.py`` starting ``threadwork worker``: a client of the service that builds none
of these objects, wired by ``channels/agent_cli/main.py``). ``threadwork sandbox`` runs the service
built here, with its embedded Slack workspace and page around it (``channels/sandbox/main.py``).
"""

from bot.root.core import (
    Core,
    Overrides,
    SecretsNotConfigured,
    build_core,
    build_reconciler,
    check_secrets,
    check_secrets_before_start,
    migrate,
    open_core,
    schema_revisions,
    secret_box,
    worker_id,
)
from bot.root.serve import bridge_stdio, freeze_start_up, serve
from bot.root.server import SHUTDOWN_GRACE_SECONDS
from bot.root.service import SHUTDOWN_DRAIN_SECONDS, Service, open_service
from bot.root.slack import Slack, SlackNotConfigured, check_slack_settings

__all__ = [
    "SHUTDOWN_DRAIN_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "Core",
    "Overrides",
    "SecretsNotConfigured",
    "Service",
    "Slack",
    "SlackNotConfigured",
    "bridge_stdio",
    "build_core",
    "build_reconciler",
    "check_secrets",
    "check_secrets_before_start",
    "check_slack_settings",
    "freeze_start_up",
    "migrate",
    "open_core",
    "open_service",
    "schema_revisions",
    "secret_box",
    "serve",
    "worker_id",
]
