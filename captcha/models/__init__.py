"""Model zoo. Importing this package registers every architecture family."""

from captcha.models import cnn, resnet, sepnet  # noqa: F401  (registration side effects)
from captcha.classify import models as _classify_models  # noqa: F401,E402
from captcha.models._heads import HEAD_TYPES, Recognizer
from captcha.models._registry import count_parameters, create_model, list_models, register_model, supports_head

__all__ = ["HEAD_TYPES", "Recognizer", "count_parameters", "create_model", "list_models", "register_model", "supports_head"]
