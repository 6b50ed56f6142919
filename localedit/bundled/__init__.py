"""What the bundled model brings: the synthetic-face generator, its samples, factor probe, supervised references
and training.

Built on ``localedit.core``; nothing in the core depends on it.
"""
