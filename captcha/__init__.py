"""captchakit: train compact CAPTCHA recognizers, export them to ONNX and serve them over gRPC.

The import package is ``captcha``; the distribution is ``captchakit`` (PyPI's ``captcha`` is an
unrelated image generator that installs the same import name).
"""

__version__ = "0.1.0"
