"""The SEKE engine: knowledge, prompts, sampling, uncertainty, metrics and formats.

Everything in this package is plain Python (numpy, Pillow, the standard library)
and never imports Django, so it can be used and tested on its own.
"""
