"""OPC UA input (asyncua): subscriptions or polling, explicit node maps and browsing."""

__all__: list[str] = []
