"""Chat-platform adapters. Each turns platform payloads into use-case calls and renders results."""
