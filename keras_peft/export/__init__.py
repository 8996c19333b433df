"""Exporting an applied model for serving (TensorFlow SavedModel)."""

from keras_peft.export.saved_model import export_saved_model
