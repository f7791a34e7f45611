"""The Slack adapter: Bolt app, listeners, rendering and outbox delivery."""
