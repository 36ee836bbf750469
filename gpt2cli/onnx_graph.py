"""GPT-2's decoder built directly as an ONNX graph of ONNX Runtime's fused operators.

optimum's export traces transformers' Python: about 2,700 nodes for 12 layers (shape arithmetic,
masks rebuilt every step, attention as a dozen small operators). This builder writes the same
model as 9 nodes a layer:

    SkipLayerNormalization   residual sum + layer norm (the previous layer's bias folded in)
    MatMul + Add             fused query, key and value projection and its bias
    GroupQueryAttention      causal, padding as a bias, appends to the cache in place
    MatMul                   attention output projection
    SkipLayerNormalization   residual sum + ln_2 (the projection's bias folded in)
    MatMul + FastGelu        MLP up-projection, bias and GPT-2's tanh GELU in one kernel
    MatMul                   MLP down-projection (its bias goes to the next SkipLayerNormalization)

Inputs and outputs are the export format's (`onnx_format`): optimum's names plus
`hidden_states.{i}` and `logits_to_keep`, so the ONNX backend runs either graph. Quantization
(`exporting.quantize`) later turns every MatMul with a constant weight into MatMulNBits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2cli.backends.onnx_format import (
    EMBEDDING_TABLES,
    KEEP_INPUT,
    LOGITS_OUTPUT,
    ROW_LENGTHS_KEY,
    SHARED_CACHE_KEY,
    hidden_name,
    past_name,
    present_name,
)
from gpt2cli.errors import ModelError
from gpt2cli.model_info import TANH_GELU

if TYPE_CHECKING:
    from collections.abc import Mapping

MS_DOMAIN = "com.microsoft"
OPSET = 17  # the oldest with LayerNormalization
# activation_function values and the contrib operator computing each exactly.
ACTIVATIONS = {**dict.fromkeys(TANH_GELU, "FastGelu"), "gelu": "Gelu"}
LM_HEAD_TRANSPOSED = "lm_head.weight_transposed"
LM_HEAD_NODE = "/lm_head"
CONTRIB_OPS = {"SkipLayerNormalization", "MultiHeadAttention", "GroupQueryAttention", "FastGelu",
               "Gelu", "FusedMatMul"}  # fmt: skip
MASKED = -10000.0  # MultiHeadAttention's mask_filter_value: exp() of it is 0 in float32


def unsupported(config: Mapping[str, Any]) -> str | None:
    """Why this builder cannot express the model of `config` (None when it can)."""
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        return f"activation_function {activation!r}"
    if config.get("add_cross_attention"):
        return "cross-attention"
    if not config.get("scale_attn_weights", True):
        return "unscaled attention (scale_attn_weights false)"
    return None


def build_decoder(
    weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    quantizable: bool = False,
    opset: int = OPSET,
    shared_cache: bool = True,
) -> Any:
    """The decoder of a GPT2LMHeadModel state dict (numpy float32 arrays, transformers'
    names) as an `onnx.ModelProto`.

    `quantizable`: project to the vocabulary with a MatMul on a transposed copy of the token
    table (the form a quantizer takes) instead of FusedMatMul(transB) on the table itself (the
    tied weight stored once).

    `shared_cache`: attention is GroupQueryAttention (as many key/value heads as query heads),
    which appends the new keys and values in place when a past input and its present output are
    the same preallocated buffer (IO binding): no step copies the cache. The left padding is an
    additive attention bias from `attention_mask`, and every row's cache spans
    attention_mask's width (the scheduler's right-aligned rows). Otherwise MultiHeadAttention,
    whose present is a new tensor every step (past and new keys concatenated)."""
    from onnx import TensorProto, helper, numpy_helper

    reason = unsupported(config)
    if reason:
        raise ModelError(f"the fused ONNX graph does not support {reason}")
    n_layer, n_head = int(config["n_layer"]), int(config["n_head"])
    n_embd = int(config["n_embd"])
    head_dim = n_embd // n_head
    epsilon = float(config.get("layer_norm_epsilon", 1e-5))
    gelu = ACTIVATIONS[config.get("activation_function", "gelu_new")]
    by_layer_index = bool(config.get("scale_attn_by_inverse_layer_idx", False))

    nodes: list[Any] = []
    initializers: list[Any] = []

    def weight(name: str, array: np.ndarray | None = None) -> str:
        value = weights[name] if array is None else array
        initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)
        )
        return name

    def node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        domain = MS_DOMAIN if op in CONTRIB_OPS else ""
        nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))

    wte, wpe = EMBEDDING_TABLES
    weight(wte, weights["transformer.wte.weight"])
    weight(wpe, weights["transformer.wpe.weight"])
    node("Gather", [wte, "input_ids"], ["/embed/tokens"], "/embed/tokens")
    node("Gather", [wpe, "position_ids"], ["/embed/positions"], "/embed/positions")
    node("Add", ["/embed/tokens", "/embed/positions"], [hidden_name(0)], "/embed/add")
    if shared_cache:
        _attention_inputs(node, initializers)
    else:
        node("Cast", ["attention_mask"], ["/mask_int32"], "/mask_int32", to=TensorProto.INT32)

    residual = hidden_name(0)  # the residual stream entering the next block
    pending = None  # (output, bias) of the last down-projection, not yet added to the stream
    for layer in range(n_layer):
        prefix = f"transformer.h.{layer}."
        at = f"/h.{layer}"
        ln1_gamma, ln1_beta = weight(prefix + "ln_1.weight"), weight(prefix + "ln_1.bias")
        if pending is None:
            node("LayerNormalization", [residual, ln1_gamma, ln1_beta], [f"{at}/ln_1"],
                 f"{at}/ln_1", axis=-1, epsilon=epsilon)
        else:
            stream = hidden_name(layer)
            node("SkipLayerNormalization",
                 [pending[0], residual, ln1_gamma, ln1_beta, pending[1]],
                 [f"{at}/ln_1", "", "", stream], f"{at}/ln_1", epsilon=epsilon)
            residual = stream
        node("MatMul", [f"{at}/ln_1", weight(prefix + "attn.c_attn.weight")], [f"{at}/qkv"],
             f"{at}/qkv")
        scale = float(1.0 / np.sqrt(head_dim) / (layer + 1 if by_layer_index else 1))
        cache = [past_name(layer, "key"), past_name(layer, "value")]
        attention_out = [f"{at}/attn", present_name(layer, "key"), present_name(layer, "value")]
        if shared_cache:
            node("Add", [f"{at}/qkv", weight(prefix + "attn.c_attn.bias")], [f"{at}/qkv_bias"],
                 f"{at}/qkv_bias")
            node(
                "GroupQueryAttention",
                [f"{at}/qkv_bias", "", "", *cache, "/seqlens_k", "/total_length", "", "", "",
                 "/attention_bias"],
                attention_out, f"{at}/attention", num_heads=n_head, kv_num_heads=n_head,
                scale=scale,
            )
        else:
            node("Split", [f"{at}/qkv", "/qkv_split"], [f"{at}/q", f"{at}/k", f"{at}/v"],
                 f"{at}/split", axis=-1)
            node(
                "MultiHeadAttention",
                [f"{at}/q", f"{at}/k", f"{at}/v", weight(prefix + "attn.c_attn.bias"),
                 "/mask_int32", "", *cache],
                attention_out, f"{at}/attention", num_heads=n_head, unidirectional=1,
                scale=scale,
            )
        node("MatMul", [f"{at}/attn", weight(prefix + "attn.c_proj.weight")],
             [f"{at}/attn_proj"], f"{at}/attn_proj")
        after_attention = f"{at}/residual_attn"
        node("SkipLayerNormalization",
             [f"{at}/attn_proj", residual, weight(prefix + "ln_2.weight"),
              weight(prefix + "ln_2.bias"), weight(prefix + "attn.c_proj.bias")],
             [f"{at}/ln_2", "", "", after_attention], f"{at}/ln_2", epsilon=epsilon)
        residual = after_attention
        node("MatMul", [f"{at}/ln_2", weight(prefix + "mlp.c_fc.weight")], [f"{at}/fc"],
             f"{at}/fc")
        node(gelu, [f"{at}/fc", weight(prefix + "mlp.c_fc.bias")], [f"{at}/gelu"], f"{at}/gelu")
        node("MatMul", [f"{at}/gelu", weight(prefix + "mlp.c_proj.weight")], [f"{at}/mlp"],
             f"{at}/mlp")
        pending = (f"{at}/mlp", weight(prefix + "mlp.c_proj.bias"))

    final = hidden_name(n_layer)  # transformers' last hidden state is ln_f's output
    ln_f = (weight("transformer.ln_f.weight"), weight("transformer.ln_f.bias"))
    if pending is None:
        node("LayerNormalization", [residual, *ln_f], [final], "/ln_f", axis=-1, epsilon=epsilon)
    else:
        node("SkipLayerNormalization", [pending[0], residual, *ln_f, pending[1]], [final],
             "/ln_f", epsilon=epsilon)

    # logits = head(Slice(hidden, -logits_to_keep, end, axis 1)): 0 keeps every position.
    initializers += [
        numpy_helper.from_array(np.array([0], dtype=np.int64), KEEP_INPUT),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), "/keep_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "/keep_axis"),
        numpy_helper.from_array(np.array([n_embd] * 3, dtype=np.int64), "/qkv_split"),
    ]
    node("Neg", [KEEP_INPUT], ["/keep_start"], "/keep_start")
    node("Slice", [final, "/keep_start", "/keep_end", "/keep_axis"], ["/kept"], "/keep")
    head = weights.get("lm_head.weight")
    tied = head is None or np.array_equal(head, weights["transformer.wte.weight"])
    if tied and not quantizable:
        node("FusedMatMul", ["/kept", wte], [LOGITS_OUTPUT], LM_HEAD_NODE, transB=1)
    else:
        table = weights["transformer.wte.weight"] if tied else head
        node("MatMul", ["/kept", weight(LM_HEAD_TRANSPOSED, np.asarray(table).T)],
             [LOGITS_OUTPUT], LM_HEAD_NODE)

    batch, new, total, past = "batch_size", "sequence_length", "total_sequence_length", \
        "past_sequence_length"
    cache_shape = [batch, n_head, past, head_dim]
    present_shape = [batch, n_head, total, head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, new]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch, new]),
    ]
    outputs = [
        helper.make_tensor_value_info(
            LOGITS_OUTPUT, TensorProto.FLOAT, [batch, "kept_positions", int(config["vocab_size"])]
        )
    ]
    for layer in range(n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                past_name(layer, kind), TensorProto.FLOAT, cache_shape))
            outputs.append(helper.make_tensor_value_info(
                present_name(layer, kind), TensorProto.FLOAT, present_shape))
    inputs.append(helper.make_tensor_value_info(KEEP_INPUT, TensorProto.INT64, [1]))
    for index in range(n_layer + 1):
        outputs.append(helper.make_tensor_value_info(
            hidden_name(index), TensorProto.FLOAT, [batch, new, n_embd]))

    graph = helper.make_graph(nodes, "gpt2cli-gpt2-decoder", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)]
    # The oldest IR that has the opset: newer onnx packages default to IRs that ONNX Runtime
    # may not read yet.
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="gpt2cli",
        ir_version=helper.find_min_ir_version_for(opsets[:1]),
    )
    if shared_cache:
        helper.set_model_props(model, {SHARED_CACHE_KEY: "1", ROW_LENGTHS_KEY: "1"})
    return model


def _attention_inputs(node: Any, initializers: list[Any]) -> None:
    """What every GroupQueryAttention node takes besides its layer's tensors: each row's last
    position (seqlens_k), the width as a scalar, and the padding as an additive bias of shape
    (batch, 1, new, width). A prompt (no past) ends at the mask's width - 1 in every row (rows
    left-padded, or right-padded under the bias); a step on a past ends at the last 1 of each
    row's mask, so a row's keys and values may also sit left-aligned at [0, its length) and the
    step reads none of the padding after them (`ROW_LENGTHS_KEY`)."""
    from onnx import TensorProto, numpy_helper

    def constant(name: str, value: Any, dtype: Any = np.int64) -> None:
        initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))

    constant("/zero", 0)
    constant("/one", 1)
    constant("/axis0", [0])
    constant("/axis1", [1])
    constant("/bias_axes", [1, 2])
    constant("/one_float", 1.0, np.float32)
    constant("/unmasked", -MASKED, np.float32)
    node("Shape", ["attention_mask"], ["/mask_shape"], "/mask_shape")
    node("Gather", ["/mask_shape", "/axis0"], ["/batch"], "/batch", axis=0)
    node("Gather", ["/mask_shape", "/axis1"], ["/width"], "/width", axis=0)
    node("Gather", ["/mask_shape", "/one"], ["/width_scalar"], "/width_scalar", axis=0)
    node("Cast", ["/width_scalar"], ["/total_length"], "/total_length", to=TensorProto.INT32)
    node("Shape", ["input_ids"], ["/ids_shape"], "/ids_shape")
    node("Gather", ["/ids_shape", "/axis1"], ["/new_length"], "/new_length", axis=0)
    node("Sub", ["/width", "/axis1"], ["/last_position"], "/last_position")
    node("Expand", ["/last_position", "/batch"], ["/last_positions"], "/last_positions")
    # the index of each row's last 1: argmax(mask * [0, 1, ..., width - 1])
    node("Range", ["/zero", "/width_scalar", "/one"], ["/positions"], "/positions")
    node("Mul", ["attention_mask", "/positions"], ["/real_positions"], "/real_positions")
    node("ArgMax", ["/real_positions"], ["/row_ends"], "/row_ends", axis=1, keepdims=0)
    node("Less", ["/new_length", "/width"], ["/has_past"], "/has_past")
    node("Where", ["/has_past", "/row_ends", "/last_positions"], ["/ends"], "/ends")
    node("Cast", ["/ends"], ["/seqlens_k"], "/seqlens_k", to=TensorProto.INT32)
    # (mask - 1) * 10000: 0 where a position is real, MASKED where it is padding
    node("Cast", ["attention_mask"], ["/mask_float"], "/mask_float", to=TensorProto.FLOAT)
    node("Sub", ["/mask_float", "/one_float"], ["/mask_off"], "/mask_off")
    node("Mul", ["/mask_off", "/unmasked"], ["/mask_bias"], "/mask_bias")
    node("Unsqueeze", ["/mask_bias", "/bias_axes"], ["/mask_bias_4d"], "/mask_bias_4d")
    node("Concat", ["/batch", "/axis1", "/new_length", "/width"], ["/bias_shape"],
         "/bias_shape", axis=0)
    node("Expand", ["/mask_bias_4d", "/bias_shape"], ["/attention_bias"], "/attention_bias")
