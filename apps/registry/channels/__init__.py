"""Delivery channels of registry events: one small module per channel, each with `handle_event(event)`.

A channel is an event handler (see apps/registry/events.py) registered in `RegistryConfig.ready()`;
another app adds its own (Slack, say) with `register_event_handler(name, handler)` from its own `ready()`.
"""
