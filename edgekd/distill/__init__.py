"""Distillation: losses (registry), feature hooks, per-sample weighting, teacher-logit cache, trainer."""
