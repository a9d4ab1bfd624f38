# Configurations of UniAttn checkpoints (Softmax unification across layers, Xiong et al.,
# arXiv 2502.00439) for transformers' AutoConfig with trust_remote_code.
#
# A unified checkpoint's config.json is the base family's config with
#   model_type: "uniattn_<family>" (uniattn_llama, uniattn_mistral, uniattn_gemma2,
#               uniattn_gemma3_text), so stock transformers refuses to load it as a plain model;
#   uniattn:    {"variant": "softmax" | "uniattn" | "cla" | "none", "groups": [[leader, f1, ...]]};
#   auto_map:   these classes and the ones in modeling_uniattn.py.
# `uniattn` is kept as an extra attribute of the family's config (it is written back by
# save_pretrained). The file is versioned in python/uniattn_hf/ of the uniattn repository and is
# written into every unified checkpoint by libuniattn; it works with transformers 4.46 and 5.x
# (Gemma-3 needs 4.50 or later).
from transformers import Gemma2Config, LlamaConfig, MistralConfig

try:  # transformers >= 4.50
    from transformers import Gemma3TextConfig
except ImportError:  # pragma: no cover - depends on the installed transformers
    Gemma3TextConfig = None


class UniAttnLlamaConfig(LlamaConfig):
    model_type = "uniattn_llama"


class UniAttnMistralConfig(MistralConfig):
    model_type = "uniattn_mistral"


class UniAttnGemma2Config(Gemma2Config):
    model_type = "uniattn_gemma2"


if Gemma3TextConfig is not None:

    class UniAttnGemma3TextConfig(Gemma3TextConfig):
        model_type = "uniattn_gemma3_text"

else:

    class UniAttnGemma3TextConfig(LlamaConfig):  # pragma: no cover
        model_type = "uniattn_gemma3_text"

        def __init__(self, *args, **kwargs):
            import transformers

            raise ImportError(
                "uniattn_gemma3_text checkpoints need transformers >= 4.50 (Gemma-3); "
                f"this is transformers {transformers.__version__}")
