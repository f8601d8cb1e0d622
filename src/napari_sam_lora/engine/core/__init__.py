"""Foundations every other engine package uses: errors, the one validator, the one atomic
writer, generator helpers, JSON-able records, file names and native-library loading (no
torch, no SAM2 at import)."""
