"""Persistence: the per-run Zarr store of subspaces and JIVE bases, and the direction catalogue built from it."""
