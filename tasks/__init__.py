"""Prefect tasks over the localedit library: they take run directories and ids, never tensors or models."""
