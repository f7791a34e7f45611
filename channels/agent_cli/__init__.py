"""``threadwork worker``: runs coding-agent CLIs (Claude Code, Codex, Gemini CLI, or any command)
on an external agent's tasks, as an MCP client of threadwork. ``main`` wires it, ``worker``
takes the work, ``attempt`` runs one dispatch attempt, ``process`` and ``reaper`` keep each
command in a process group that dies with it."""
