"""The image-classification track: ImageFolder/MNIST data, classifiers, recipes, reports.

Importing the package registers the classifiers (`mlp`, `cnn`, `resnet18_cls`, `resnet50`) in
the model registry; it imports nothing else so that `captcha.models` can import it without a
cycle. The other modules (`data`, `train`, `metrics`, `svm`, `sweep`, `cli`) are imported where
used.
"""

from captcha.classify import models  # noqa: F401  (registration side effects)
