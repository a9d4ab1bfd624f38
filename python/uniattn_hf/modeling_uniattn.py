# UniAttn decoders (Softmax unification across layers, Xiong et al., arXiv 2502.00439) for
# transformers' AutoModelForCausalLM with trust_remote_code: LLaMA, Mistral, Gemma-2 and Gemma-3
# checkpoints of the variants `softmax`, `uniattn` and `cla` (and `none`), as libuniattn writes
# them. The file is versioned in python/uniattn_hf/ of the uniattn repository; it works with
# transformers 4.46 (the reference implementation's version) and 5.x.
#
# Consecutive layers form SuperBlocks (config.uniattn.groups). The first layer of a group (the
# leader) attends as usual and hands what its followers reuse to them during the same forward
# pass; the other layers (followers) compute, with x the residual stream and xn = norm(x):
#   softmax / uniattn: A = o_proj(P_leader . V(xn)) [+ W_c(xn) for uniattn]
#                      no q_proj, k_proj, RoPE or K cache: P_leader is the leader's probability map
#   cla:               A = o_proj(softmax(q(xn) K_leader^T) . V_leader)
#                      no k_proj, v_proj and nothing in the cache
# The decoder layers are transformers' own (so Gemma-2/3 put A through their post-attention
# norm before the residual add, as the method says); only the attention modules of leaders and
# followers are replaced. Layers outside every group keep transformers' attention unchanged.
#
# The cache is transformers' own: a follower writes a zero-width K (and, for CLA, a zero-width V)
# so that its layer keeps the cache's length bookkeeping but no K bytes. Preallocated caches
# (transformers 4.4x's HybridCache/StaticCache) get their follower K buffers released on first
# use.
#
# Attention runs eagerly (the probability map is shared); sdpa / flash attention are not offered,
# nor gradient checkpointing (a follower needs its leader's state from the same forward pass).
import torch
import transformers
from torch import nn
from transformers import Gemma2ForCausalLM, LlamaForCausalLM, MistralForCausalLM
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral

from .configuration_uniattn import (UniAttnGemma2Config, UniAttnGemma3TextConfig,
                                    UniAttnLlamaConfig, UniAttnMistralConfig)

try:  # transformers >= 4.50
    from transformers import Gemma3ForCausalLM
    from transformers.models.gemma3 import modeling_gemma3
except ImportError:  # pragma: no cover - depends on the installed transformers
    Gemma3ForCausalLM = None
    modeling_gemma3 = None

VARIANTS = ("none", "softmax", "uniattn", "cla")

_VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2])
# transformers < 4.48: attention modules return (output, weights, cache) and take
# `past_key_value`; later ones return (output, weights) and take `past_key_values` / `cache`.
_RETURNS_CACHE = _VERSION < (4, 48)


class LayerRole:
    """What a layer computes: `leader` is the layer whose attention it reuses (itself when it is
    a leader or an ordinary layer); `last` is the last layer reusing this leader's attention."""

    def __init__(self, layer):
        self.layer = self.leader = self.last = layer

    @property
    def is_follower(self):
        return self.leader != self.layer

    @property
    def has_followers(self):
        return self.last != self.layer


def _groups_from_spec(spec, num_layers):
    """uniattn.groups, or uniattn.superblocks {size, begin, end} as in method.md section 2: layer
    i leads when i < begin, i >= end or (i - begin) % size == 0, else follows the leader before."""
    if "groups" in spec:
        groups = spec["groups"]
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise ValueError("config.json: 'uniattn.groups' must be a list of lists of layers")
        return groups
    sb = spec.get("superblocks")
    if sb is None:
        return []
    try:
        size, begin, end = int(sb["size"]), int(sb["begin"]), int(sb["end"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("config.json: 'uniattn.superblocks' needs integers size, begin, end")
    if size < 2 or not 0 <= begin < num_layers:
        raise ValueError(f"config.json: invalid 'uniattn.superblocks' {sb} for {num_layers} layers")
    return [list(range(s, min(s + size, end, num_layers)))
            for s in range(begin, min(end, num_layers), size) if min(s + size, end, num_layers) - s > 1]


def layer_roles(config):
    """One LayerRole per layer from config.uniattn; raises ValueError naming the key on a spec
    that is not valid for this config (unknown variant, layers out of range or in two groups,
    groups not increasing, a group mixing sliding-window and global layers)."""
    n = config.num_hidden_layers
    spec = getattr(config, "uniattn", None) or {}
    if not isinstance(spec, dict):
        raise ValueError("config.json: 'uniattn' must be an object")
    variant = spec.get("variant", "none")
    if variant not in VARIANTS:
        raise ValueError(f"config.json: unknown 'uniattn.variant' {variant!r} (one of {VARIANTS})")
    roles = [LayerRole(i) for i in range(n)]
    if variant == "none":
        return variant, roles
    layer_types = getattr(config, "layer_types", None)
    seen = set()
    for g in _groups_from_spec(spec, n):
        if len(g) < 2 or not all(isinstance(i, int) and 0 <= i < n for i in g):
            raise ValueError(f"config.json: 'uniattn.groups' entry {g} needs >= 2 layers in [0, {n})")
        if any(b <= a for a, b in zip(g, g[1:])) or seen.intersection(g):
            raise ValueError(f"config.json: 'uniattn.groups' entry {g} is not increasing or "
                             "shares a layer with another group")
        if layer_types and len({layer_types[i] for i in g}) != 1:
            raise ValueError(f"config.json: 'uniattn.groups' entry {g} mixes sliding-window and "
                             "global attention layers")
        seen.update(g)
        roles[g[0]].last = g[-1]
        for i in g[1:]:
            roles[i].leader = g[0]
    return variant, roles


class SharedAttention:
    """What each leader hands its followers during one forward pass, by leader layer: q after
    RoPE [B, Hq, T, D], K and V over the attended keys [B, Hkv, S, D], the probability map
    P [B, Hq, T, S]. The last follower of a group drops its leader's entry."""

    def __init__(self):
        self.by_leader = {}


def _cache_of(kwargs):
    for name in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _release_preallocated(cache, layer, keep_values):
    """transformers 4.4x's HybridCache / StaticCache allocate K and V for every layer up front;
    a follower keeps no K (a CLA follower no V either): its buffers become zero-width."""
    for name, release in (("key_cache", True), ("value_cache", not keep_values)):
        buffers = cache.__dict__.get(name)
        if not release or not isinstance(buffers, list) or layer >= len(buffers):
            continue
        t = buffers[layer]
        if torch.is_tensor(t) and t.dim() == 4 and t.shape[-1] != 0:
            buffers[layer] = t.new_zeros(*t.shape[:-1], 0)


def _attend(module, q, k, v, mask):
    """Eager attention as transformers' eager path computes it: scores q k^T * scaling,
    Gemma-2's tanh soft-capping, the additive (or boolean) mask cut to the key length, an fp32
    softmax. Returns (P . V [B, Hq, T, D], P [B, Hq, T, S])."""
    groups = module.num_key_value_groups
    k = modeling_llama.repeat_kv(k, groups)
    scores = torch.matmul(q, k.transpose(2, 3)) * module.scaling
    cap = module._softcap
    if cap:
        scores = torch.tanh(scores / cap) * cap
    if mask is not None:
        mask = mask[:, :, :, : k.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return _apply_probs(module, probs, v), probs


def _apply_probs(module, probs, v):
    return torch.matmul(probs, modeling_llama.repeat_kv(v, module.num_key_value_groups))


def _make_attention_classes(base, rope_fn):
    """Leader and follower attention modules derived from a family's attention class `base`
    (LlamaAttention, MistralAttention, Gemma2Attention, Gemma3Attention): they keep its
    projections, norms, scaling and RoPE module, and its parameter names."""

    class Common(base):
        def _setup(self, config, shared):
            self.__dict__["_shared"] = shared  # a plain object, not a submodule
            self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
            self.head_dim = getattr(config, "head_dim", None) or (
                config.hidden_size // config.num_attention_heads)
            # transformers' Gemma-2 caps attention logits; its Gemma-3 attention does not.
            cap = getattr(config, "attn_logit_softcapping", None)
            self._softcap = cap if base.__name__ == "Gemma2Attention" else None
            if not hasattr(self, "scaling"):
                self.scaling = self.head_dim ** -0.5

        def _heads(self, proj, x):
            b, t = x.shape[:2]
            return proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)

        def _rope(self, x, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is None:  # transformers 4.46 Mistral / Gemma-2: RoPE inside the attention
                pe = self.rotary_emb(x, kwargs.get("position_ids"))
            cos, sin = pe
            return cos, sin

        def _cache_kwargs(self, cos, sin, kwargs):
            return {"sin": sin, "cos": cos, "cache_position": kwargs.get("cache_position"),
                    "sliding_window": getattr(self, "sliding_window", None)}

        def _out(self, out, cache):
            b, _, t, _ = out.shape
            out = self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            return (out, None, cache) if _RETURNS_CACHE else (out, None)

    class LeaderAttention(Common):
        """A leader: the family's attention, which also keeps q, K, V and P for its followers."""

        def __init__(self, config, layer_idx, shared):
            super().__init__(config, layer_idx)
            self._setup(config, shared)

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            cache = _cache_of(kwargs)
            q = self._heads(self.q_proj, hidden_states)
            k = self._heads(self.k_proj, hidden_states)
            v = self._heads(self.v_proj, hidden_states)
            if hasattr(self, "q_norm"):  # Gemma-3
                q, k = self.q_norm(q), self.k_norm(k)
            cos, sin = self._rope(v, kwargs)
            q, k = rope_fn(q, k, cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx, self._cache_kwargs(cos, sin, kwargs))
            out, probs = _attend(self, q, k, v, attention_mask)
            self._shared.by_leader[self.layer_idx] = (q, k, v, probs)
            return self._out(out, cache)

    class FollowerAttention(Common):
        """A follower (method.md section 3): reuses its leader's probability map with its own V
        (softmax, uniattn; plus W_c for uniattn), or its leader's K and V with its own q (cla)."""

        def __init__(self, config, layer_idx, shared, leader, last, variant):
            super().__init__(config, layer_idx)
            self._setup(config, shared)
            self.leader, self.last_of_group = leader, layer_idx == last
            self.cla = variant == "cla"
            del self.k_proj
            if hasattr(self, "k_norm"):
                del self.k_norm
            if self.cla:
                del self.v_proj
            else:
                del self.q_proj
                if hasattr(self, "q_norm"):
                    del self.q_norm
            if variant == "uniattn":
                h = config.hidden_size
                self.w_c = nn.Linear(h, h, bias=getattr(config, "attention_bias", False))
                with torch.no_grad():  # zero compensation until loaded: plain Softmax sharing
                    self.w_c.weight.zero_()
                    if self.w_c.bias is not None:
                        self.w_c.bias.zero_()

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            cache = _cache_of(kwargs)
            entry = self._shared.by_leader.get(self.leader)
            if entry is None:
                raise RuntimeError(f"UniAttn: layer {self.layer_idx} runs before its leader "
                                   f"{self.leader} in this forward pass")
            q_lead, k_lead, v_lead, probs = entry
            if self.cla:
                q = self._heads(self.q_proj, hidden_states)
                if hasattr(self, "q_norm"):
                    q = self.q_norm(q)
                cos, sin = self._rope(q, kwargs)
                q = rope_fn(q, q, cos, sin)[0]
                if cache is not None:  # nothing kept: zero-width K and V
                    _release_preallocated(cache, self.layer_idx, keep_values=False)
                    empty = q.new_zeros(q.shape[0], k_lead.shape[1], q.shape[2], 0)
                    cache.update(empty, empty, self.layer_idx, self._cache_kwargs(cos, sin, kwargs))
                out, _ = _attend(self, q, k_lead, v_lead, attention_mask)
            else:
                v = self._heads(self.v_proj, hidden_states)
                if cache is not None:  # V only: a zero-width K
                    _release_preallocated(cache, self.layer_idx, keep_values=True)
                    empty = v.new_zeros(*v.shape[:-1], 0)
                    _, v = cache.update(empty, v, self.layer_idx,
                                        self._cache_kwargs(None, None, kwargs))
                out = _apply_probs(self, probs, v)
            if self.last_of_group:
                del self._shared.by_leader[self.leader]
            result = self._out(out, cache)
            if hasattr(self, "w_c"):
                result = (result[0] + self.w_c(hidden_states),) + tuple(result[1:])
            return result

    return LeaderAttention, FollowerAttention


def _unify(model, config, attention_classes):
    """Replaces the attention modules of leaders and followers in model.model.layers."""
    variant, roles = layer_roles(config)
    if variant == "none":
        return
    leader_cls, follower_cls = attention_classes
    shared = SharedAttention()
    for i, layer in enumerate(model.model.layers):
        # Built like the modules they replace (same default dtype and device context, e.g.
        # from_pretrained's empty-weights initialisation); the weights are loaded afterwards.
        role = roles[i]
        if role.is_follower:
            last = roles[role.leader].last
            layer.self_attn = follower_cls(config, i, shared, role.leader, last, variant)
        elif role.has_followers:
            layer.self_attn = leader_cls(config, i, shared)


class _UniAttnMixin:
    """What every UniAttn causal LM shares: eager attention only (followers reuse the leader's
    probability map, which transformers' sdpa and flash kernels do not return)."""

    _supports_sdpa = False
    # A follower reads what its leader left during the same forward pass; recomputing one layer
    # alone in backward (gradient checkpointing) would find nothing there.
    supports_gradient_checkpointing = False
    _supports_flash_attn = False
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _supports_flash_attn_3 = False


_LLAMA = _make_attention_classes(modeling_llama.LlamaAttention, modeling_llama.apply_rotary_pos_emb)
_MISTRAL = _make_attention_classes(modeling_mistral.MistralAttention,
                                   modeling_mistral.apply_rotary_pos_emb)
_GEMMA2 = _make_attention_classes(modeling_gemma2.Gemma2Attention,
                                  modeling_gemma2.apply_rotary_pos_emb)


class UniAttnLlamaForCausalLM(_UniAttnMixin, LlamaForCausalLM):
    config_class = UniAttnLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _unify(self, config, _LLAMA)


class UniAttnMistralForCausalLM(_UniAttnMixin, MistralForCausalLM):
    config_class = UniAttnMistralConfig

    def __init__(self, config):
        super().__init__(config)
        _unify(self, config, _MISTRAL)


class UniAttnGemma2ForCausalLM(_UniAttnMixin, Gemma2ForCausalLM):
    config_class = UniAttnGemma2Config

    def __init__(self, config):
        super().__init__(config)
        _unify(self, config, _GEMMA2)


# save_pretrained of a loaded model then copies this file and writes auto_map again (transformers
# 5 does so for remote classes anyway; 4.46 only for registered ones).
for _cls in (UniAttnLlamaForCausalLM, UniAttnMistralForCausalLM, UniAttnGemma2ForCausalLM):
    _cls.register_for_auto_class("AutoModelForCausalLM")

if Gemma3ForCausalLM is not None:
    _GEMMA3 = _make_attention_classes(modeling_gemma3.Gemma3Attention,
                                      modeling_gemma3.apply_rotary_pos_emb)

    class UniAttnGemma3ForCausalLM(_UniAttnMixin, Gemma3ForCausalLM):
        config_class = UniAttnGemma3TextConfig

        def __init__(self, config):
            super().__init__(config)
            _unify(self, config, _GEMMA3)

    UniAttnGemma3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

else:

    class UniAttnGemma3ForCausalLM:  # pragma: no cover
        def __init__(self, *args, **kwargs):
            raise ImportError("uniattn_gemma3_text checkpoints need transformers >= 4.50 "
                              f"(Gemma-3); this is transformers {transformers.__version__}")

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            cls()
