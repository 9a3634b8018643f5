"""Tickets: the example tenant-owned resource."""
