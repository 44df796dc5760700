"""Servicers: thin translation between lakehouse.v1 messages and the core."""
