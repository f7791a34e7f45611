"""The MCP front door: the agent tool set over streamable HTTP, for external agents."""
