"""Where built-in agents may send their keys: THREADWORK_MODEL_HOSTS, an allowlist of hosts."""

from dataclasses import dataclass
from urllib.parse import urlsplit

#: Where a Claude agent's requests go when ANTHROPIC_BASE_URL is not set.
ANTHROPIC_API_URL = "https://api.anthropic.com"


@dataclass(frozen=True)
class ModelHosts:
    """The hosts (``name`` or ``name:port``) model endpoints may be on; empty allows any."""

    hosts: frozenset[str] = frozenset()

    def allows(self, url: str) -> bool:
        """Whether a built-in agent may call ``url`` (and so send it its key)."""
        if not self.hosts:
            return True
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        host = parts.hostname.lower()
        name = f"[{host}]" if ":" in host else host
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return name in self.hosts or f"{name}:{port}" in self.hosts

    def refusal(self, agent: str, url: str) -> str:
        """Why ``agent`` may not call ``url``, naming the host but never a key."""
        parts = urlsplit(url)
        host = parts.hostname or "that address"
        allowed = ", ".join(sorted(self.hosts))
        return (
            f"`{agent}` may not send its key to {host}: THREADWORK_MODEL_HOSTS allows only "
            f"{allowed}."
        )
