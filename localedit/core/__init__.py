"""The method: h-space, DDIM inversion, Jacobian subspaces, JIVE, regions, mining and editing.

Works on any diffusers ``UNet2DModel``; it imports only ``localedit.utils`` (see ``tests/test_layers.py``).
"""
