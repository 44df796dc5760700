"""The bottom layer: names and their rules, value types and the error taxonomy.

It imports nothing of ours (docs/development/architecture.md): core, adapters, servicers and
the transport all build on it.
"""
