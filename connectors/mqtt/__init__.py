"""MQTT input: plain topic templates and Sparkplug B."""

__all__: list[str] = []
