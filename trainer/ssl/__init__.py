"""Self-supervised pretraining on paired EHR + CXR (SPEC §10): losses by method name, the
gradient-carrying all-gather that makes them see the global batch, SSL image augmentations and
the LARS optimizer. The models that use them are in ``trainer.models.ssl``."""
