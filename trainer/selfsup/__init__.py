"""Self-supervised pretraining on paired EHR + CXR (SPEC §10): losses by method name, the
gradient-carrying all-gather that makes them see the global batch, SSL image augmentations and
the LARS optimizer. The models that use them are in ``trainer.models.ssl``.

Not named ``trainer/ssl``: ``python trainer/train.py`` puts ``trainer/`` first on ``sys.path``,
where such a package would shadow the standard library's ``ssl`` (asyncio imports it)."""
