"""Scoring directions and models: baselines, metrics (locality, PSNR/SSIM, LPIPS), strength matching, the method
comparison, summaries, the HTML report and the bundled model's card. Every column of the metric rows and
summaries is named once, in ``schema``.
"""
