"""Models of the benchmark, built by name: ``create_model("medfuse", cfg, task_spec("ihm"))``.

Registered: uni_ehr, uni_cxr (unimodal.py); early, joint, late, medfuse (fusion.py); mmtm,
daft (interleaved.py); convirt, align, vicreg (self-supervised pretraining) and
ssl_probe, ssl_finetune (their evaluations) in ssl.py. The shared interface and its flags (causal, trainable, head_names) are
documented in base.py; configs in config.py with defaults in conf/model/<name>.yaml.
"""

from trainer.models import fusion, interleaved, ssl, unimodal  # noqa: F401  (registers the models)
from trainer.models.base import MedModel
from trainer.models.pretrained import PretrainedError
from trainer.models.registry import create_model, list_models, model_class, model_config, register_model

__all__ = [
    "MedModel",
    "PretrainedError",
    "create_model",
    "list_models",
    "model_class",
    "model_config",
    "register_model",
]
