"""The image-classification track: what is specific to classifiers.

`data` reads ImageFolder trees and MNIST IDX files; `recipes` holds the course reports' training
recipes; `train` runs them through the one trainer (`captcha.train.fit`) as a classification
task; `evaluate` scores a run per class; `svm` compares an SVM on the network's features;
`sweep` is R2's one-factor study; `cli` adds the `captcha classify` verbs. The classifier
architectures live in the model registry (`captcha.models.classifiers`).
"""
