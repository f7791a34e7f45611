"""``threadwork sandbox``: the real service against a Slack workspace embedded in the process,
in a browser. ``slack_api`` is Slack's Web API for that workspace (the tests' stand-in too),
``events`` turns people's actions into signed requests through the service's gateway,
``workspace`` seeds and keeps the workspace, ``web`` serves the page, and ``main`` wires it."""
