"""Secrets at rest: a strong key or none, a fixed derivation, rotation, and no start without one."""

import base64

import pytest
import structlog
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from bot.agents import AgentKind
from bot.errors import ConfigurationError
from bot.model_hosts import ModelHosts
from bot.root import Overrides, SecretsNotConfigured, open_core, open_service
from bot.secrets import INFO, LEGACY_INFO, SALT, SecretBox
from bot.settings import Settings, SettingsError, load_settings
from tests.conftest import FakeClock, core_settings

OLD_KEY = "qrPrJcD4g3h9a_ZpxyaJUq2u6BuW_bI0H84XA7orBDw="
NEW_KEY = "wruKx0iEyArK9oKH2mH3KXQWTqKggAzHWuLb7bs6G14="
API_KEY = "sk-ant-rotate-me-0123456789"


def load_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in (
        "THREADWORK_SECRET_KEY",
        "THREADWORK_SECRET_KEY_PREVIOUS",
        "THREADWORK_PUBLIC_URL",
        "THREADWORK_MODEL_HOSTS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize(
    "value",
    [
        "test-secret-key",
        "correct horse battery staple correct horse battery staple",
        base64.urlsafe_b64encode(b"\x00" * 32).decode(),
        base64.urlsafe_b64encode(b"ab" * 16).decode(),
        base64.urlsafe_b64encode(bytes(range(31))).decode(),
        base64.b64encode(bytes(range(200, 232))).decode(),  # standard base64: '+' and '/'
    ],
    ids=["passphrase", "spaces", "zeros", "repetitive", "31-bytes", "standard-base64"],
)
def test_a_weak_secret_key_stops_start_naming_the_variable_and_not_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_with(monkeypatch, THREADWORK_SECRET_KEY=value)
    message = str(refused.value)
    assert message.startswith("THREADWORK_SECRET_KEY:")
    assert "32" in message
    assert value not in message
    assert "\n" not in message


def test_a_strong_key_is_accepted_and_an_empty_one_means_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_with(monkeypatch, THREADWORK_SECRET_KEY=f"  {NEW_KEY}\n")
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == NEW_KEY
    unpadded = load_with(monkeypatch, THREADWORK_SECRET_KEY=NEW_KEY.rstrip("="))
    assert unpadded.secret_key is not None
    assert load_with(monkeypatch, THREADWORK_SECRET_KEY="").secret_key is None


def test_a_previous_key_needs_a_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"^THREADWORK_SECRET_KEY_PREVIOUS: .*needs"):
        load_with(monkeypatch, THREADWORK_SECRET_KEY_PREVIOUS=OLD_KEY)


@pytest.mark.parametrize(
    "value",
    [
        "threadwork.example.com",
        "ftp://threadwork.example.com",
        "https://",
        "https://threadwork.example.com:99999",
        "https://user:pw@threadwork.example.com",
        "https://threadwork.example.com/?next=1",
    ],
    ids=["no-scheme", "ftp", "no-host", "bad-port", "credentials", "query"],
)
def test_a_bad_public_url_stops_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    with pytest.raises(SettingsError, match=r"^THREADWORK_PUBLIC_URL: "):
        load_with(monkeypatch, THREADWORK_PUBLIC_URL=value)


def test_model_hosts_are_a_comma_separated_list_of_host_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_with(monkeypatch, THREADWORK_MODEL_HOSTS=" API.anthropic.com, 127.0.0.1:11434,")
    assert settings.model_hosts == ("api.anthropic.com", "127.0.0.1:11434")
    with pytest.raises(SettingsError, match=r"^THREADWORK_MODEL_HOSTS: .*not URLs"):
        load_with(monkeypatch, THREADWORK_MODEL_HOSTS="https://api.anthropic.com")


def test_model_hosts_allow_a_host_on_any_port_or_on_the_port_named() -> None:
    hosts = ModelHosts(frozenset({"api.anthropic.com", "127.0.0.1:11434"}))
    assert hosts.allows("https://api.anthropic.com/v1")
    assert hosts.allows("http://127.0.0.1:11434/v1")
    assert not hosts.allows("http://127.0.0.1:8080/v1")
    assert not hosts.allows("https://api.anthropic.com.evil.example/v1")
    assert not hosts.allows("file:///etc/passwd")
    assert ModelHosts().allows("https://anywhere.example")


def fernet_v2(key: str) -> Fernet:
    """The documented derivation: HKDF-SHA256 over the key's bytes, fixed salt and info."""
    raw = base64.urlsafe_b64decode(key)
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=INFO).derive(raw)
    return Fernet(base64.urlsafe_b64encode(derived))


def fernet_v1(key_text: str) -> Fernet:
    """The first derivation: HKDF without a salt over the key's text."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LEGACY_INFO).derive(
        key_text.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def test_the_fernet_key_is_derived_with_the_documented_salt_and_info() -> None:
    assert SALT == b"threadwork/agent-secrets/salt/v2"
    assert INFO == b"threadwork agent secrets: fernet key v2"
    ciphertext = SecretBox(NEW_KEY).encrypt(API_KEY)
    assert fernet_v2(NEW_KEY).decrypt(ciphertext).decode() == API_KEY
    with pytest.raises(InvalidToken):
        fernet_v1(NEW_KEY).decrypt(ciphertext)


def test_a_previous_key_decrypts_and_rotation_moves_rows_to_the_current_key() -> None:
    old_row = SecretBox(OLD_KEY).encrypt(API_KEY)
    with pytest.raises(ConfigurationError, match="THREADWORK_SECRET_KEY_PREVIOUS"):
        SecretBox(NEW_KEY).decrypt(old_row)
    both = SecretBox(NEW_KEY, previous=OLD_KEY)
    assert both.decrypt(old_row) == API_KEY
    rotated = both.rotate(old_row)
    assert SecretBox(NEW_KEY).decrypt(rotated) == API_KEY
    assert not SecretBox(OLD_KEY).can_decrypt(rotated)


def test_rows_from_before_the_salted_derivation_still_open_and_rotate() -> None:
    legacy_row = fernet_v1(NEW_KEY).encrypt(API_KEY.encode())
    assert SecretBox(NEW_KEY).decrypt(legacy_row) == API_KEY
    assert fernet_v2(NEW_KEY).decrypt(SecretBox(NEW_KEY).rotate(legacy_row)).decode() == API_KEY
    # A weak passphrase of old may be the previous key, so its rows can be rotated away.
    passphrase_row = fernet_v1("my old passphrase").encrypt(API_KEY.encode())
    box = SecretBox(NEW_KEY, previous="my old passphrase")
    assert fernet_v2(NEW_KEY).decrypt(box.rotate(passphrase_row)).decode() == API_KEY


def test_a_secret_box_refuses_a_weak_current_key_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"^THREADWORK_SECRET_KEY must be"):
        SecretBox("test-secret-key")
    assert NEW_KEY not in repr(SecretBox(NEW_KEY, previous=OLD_KEY))
    assert OLD_KEY not in repr(SecretBox(NEW_KEY, previous=OLD_KEY))


async def test_the_service_refuses_to_start_with_stored_secrets_and_no_key(
    database_url: str, clock: FakeClock
) -> None:
    settings = core_settings(database_url)
    async with open_core(settings) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await core.registry.set_api_key("claude-1", API_KEY)
    keyless = settings.model_copy(update={"secret_key": None})
    overrides = Overrides(clock=clock, port=0, run_loops=False)
    with pytest.raises(SecretsNotConfigured) as refused:
        async with open_service(keyless, overrides):
            pytest.fail("the service started without THREADWORK_SECRET_KEY")
    message = str(refused.value)
    assert message.startswith("THREADWORK_SECRET_KEY is not set, but 1 agent secret(s) are stored")
    assert "\n" not in message
    async with open_service(settings, overrides) as service:
        assert await service.core.registry.get_api_key("claude-1") == API_KEY


async def test_without_secrets_stored_the_service_starts_without_a_key(
    database_url: str, clock: FakeClock
) -> None:
    keyless = core_settings(database_url).model_copy(update={"secret_key": None})
    async with open_service(keyless, Overrides(clock=clock, port=0, run_loops=False)) as service:
        assert await service.core.registry.list_agents() == []


async def test_rotation_reencrypts_every_row_so_the_previous_key_can_go(database_url: str) -> None:
    base = core_settings(database_url)
    old = base.model_copy(update={"secret_key": SecretStr(OLD_KEY)})
    rotating = base.model_copy(
        update={"secret_key": SecretStr(NEW_KEY), "secret_key_previous": SecretStr(OLD_KEY)}
    )
    new = base.model_copy(update={"secret_key": SecretStr(NEW_KEY)})
    async with open_core(old) as core:
        for name in ("claude-1", "claude-2"):
            await core.registry.add_agent(name, AgentKind.CLAUDE)
            await core.registry.set_api_key(name, f"{API_KEY}-{name}")
    async with open_core(new) as core:
        assert [a.api_key_configured for a in await core.registry.list_agents()] == [False, False]
        with pytest.raises(ConfigurationError, match="2 stored secret"):
            await core.registry.rotate_secrets()
    async with open_core(rotating) as core:
        assert (await core.registry.rotate_secrets()).rotated == 2
    async with open_core(new) as core, open_core(old) as stale:
        assert await core.registry.get_api_key("claude-2") == f"{API_KEY}-claude-2"
        assert [a.api_key_configured for a in await core.registry.list_agents()] == [True, True]
        with pytest.raises(ConfigurationError):
            await stale.registry.get_api_key("claude-1")


async def test_a_refused_rotation_changes_no_row(database_url: str) -> None:
    base = core_settings(database_url)
    async with open_core(base.model_copy(update={"secret_key": SecretStr(OLD_KEY)})) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await core.registry.set_api_key("claude-1", API_KEY)
        async with core.store.read() as reader:
            before = await reader.list_agent_secrets()
    async with open_core(base.model_copy(update={"secret_key": SecretStr(NEW_KEY)})) as core:
        with pytest.raises(ConfigurationError, match="nothing was rotated"):
            await core.registry.rotate_secrets()
        async with core.store.read() as reader:
            assert await reader.list_agent_secrets() == before
            assert [s.ciphertext for s in await reader.list_agent_secrets()] == [
                s.ciphertext for s in before
            ]


async def test_the_agent_list_says_no_key_when_the_key_cannot_be_read(database_url: str) -> None:
    settings = core_settings(database_url)
    async with open_core(settings) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await core.registry.set_api_key("claude-1", API_KEY)
        [agent] = await core.registry.list_agents()
        assert agent.api_key_configured is True
    for other in (None, SecretStr(NEW_KEY)):
        async with open_core(settings.model_copy(update={"secret_key": other})) as core:
            [agent] = await core.registry.list_agents()
            assert agent.api_key_configured is False
            found = await core.registry.get_agent("claude-1")
            assert found is not None
            assert found.api_key_configured is False


async def test_keys_no_configured_value_opens_are_logged_at_start_and_shown_unset(
    database_url: str, clock: FakeClock
) -> None:
    base = core_settings(database_url)
    async with open_core(base.model_copy(update={"secret_key": SecretStr(OLD_KEY)})) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await core.registry.set_api_key("claude-1", API_KEY)
    other = base.model_copy(update={"secret_key": SecretStr(NEW_KEY)})
    overrides = Overrides(clock=clock, port=0, run_loops=False)
    with structlog.testing.capture_logs() as logs:
        async with open_service(other, overrides) as service:
            [agent] = await service.core.registry.list_agents()
    assert agent.api_key_configured is False
    assert {"event": "secrets.unreadable", "count": 1, "log_level": "warning"} in logs
    assert all(API_KEY not in repr(entry) and NEW_KEY not in repr(entry) for entry in logs)
