"""Model zoo. Importing this package registers every architecture family: the CAPTCHA
recognizers (`cnn`, `resnet`, `sepnet`) and the image classifiers (`classifiers`)."""

from captcha.models import classifiers, cnn, resnet, sepnet  # noqa: F401  (registration side effects)
from captcha.models._heads import HEAD_TYPES, AttentionHeads, CTCHead, PooledHeads, Recognizer, set_backbone_trainable
from captcha.models._registry import (ShippedWeights, count_parameters, create_model, default_input_size, list_models, register_model,
                                      shipped_weights, supports_head)

__all__ = ["HEAD_TYPES", "AttentionHeads", "CTCHead", "PooledHeads", "Recognizer", "ShippedWeights", "count_parameters",
           "create_model", "default_input_size", "list_models", "register_model", "set_backbone_trainable", "shipped_weights", "supports_head"]
