"""Downstream evaluations of pretrained encoders (probes and short fine-tunes)."""

from llmos_jax.evals.probe import (
    TopicData,
    feature_fn,
    fine_tune,
    linear_probe,
    pooled_features,
    topic_dataset,
)

__all__ = [
    "TopicData",
    "feature_fn",
    "fine_tune",
    "linear_probe",
    "pooled_features",
    "topic_dataset",
]
