"""The built-in agent runtime: a tool-use loop that works a task until review, done or blocked."""
