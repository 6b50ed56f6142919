"""Small helpers every layer may use: atomic writes, pixel ranges, bundled-data paths, image files, bad-input errors.

The lowest layer: it imports nothing else from localedit.
"""
