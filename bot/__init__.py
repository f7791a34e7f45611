"""threadwork's core: the task domain, its use cases and the ports it needs."""
