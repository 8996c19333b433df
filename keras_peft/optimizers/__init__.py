"""Optimizers for parameter-efficient fine-tuning."""

from keras_peft.optimizers.grouped_optimizer import GroupedOptimizer
