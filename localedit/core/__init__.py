"""The method: h-space, DDIM inversion, Jacobian subspaces, JIVE, regions, mining and editing.

The linear algebra they share (projections, principal angles, sign conventions) is ``subspace``;
what "block" and "split" mean is written down in ``mining``.

Works on any diffusers ``UNet2DModel``; it imports only ``localedit.utils`` (see ``tests/test_layers.py``).
"""
