"""Unit tier: the rewrites that make a converted int8 TFLite graph an edgeclf ONNX model (no TensorFlow).

Small hand-built graphs run through ONNX Runtime before and after each rewrite: the outputs must not change.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeclf.contract import TensorSpec
from edgeclf.convert import onnx_from_tflite as oft


def _run(proto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _relu6_graph(clip_max: float):
    """x -> Q/DQ (int8) -> Mul -> Clip(0, clip_max) -> Q/DQ with the range [0, 6] (int8, zero point -128)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
             helper.make_node("Mul", ["xd", "k"], ["m"]),
             helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s6", "z6"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s6", "z6"], ["y"])]
    inits = {"s_in": np.array(0.05, np.float32), "z_in": np.array(0, np.int8), "k": np.array(1.3, np.float32),
             "lo": np.array(0, np.float32),
             "hi": np.array(clip_max, np.float32), "s6": np.array(6 / 255, np.float32),
             "z6": np.array(-128, np.int8)}
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)


def test_relu6_clip_before_a_0_to_6_quantize_is_dropped_and_outputs_do_not_change():
    x = np.linspace(-7, 9, 64, dtype=np.float32)[None]
    proto = _relu6_graph(6.0)
    before = _run(proto, x)
    assert oft.drop_redundant_clips(proto) == 1
    assert "Clip" not in {n.op_type for n in proto.graph.node}
    np.testing.assert_array_equal(_run(proto, x), before)
    assert before.min() == 0 and abs(before.max() - 6) < 1e-6  # the clip's work, now done by saturation


def test_a_clip_narrower_than_the_quantized_range_stays():
    x = np.linspace(-7, 9, 64, dtype=np.float32)[None]
    proto = _relu6_graph(3.0)
    before = _run(proto, x)
    assert oft.drop_redundant_clips(proto) == 0
    np.testing.assert_array_equal(_run(proto, x), before)
    assert before.max() <= 3.0 + 6 / 255


def test_int8_activations_become_uint8_with_the_same_values_and_weights_stay_int8():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 64)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "s_w", "z_w"], ["wd"]),
             helper.make_node("Gemm", ["xd", "wd"], ["g"], transB=1),
             helper.make_node("QuantizeLinear", ["g", "s_out", "z_out"], ["gq"]),
             helper.make_node("DequantizeLinear", ["gq", "s_out", "z_out"], ["y"])]
    inits = {"s_in": np.array(0.05, np.float32), "z_in": np.array(-3, np.int8), "w": w,
             "s_w": np.array(0.01, np.float32), "z_w": np.array(0, np.int8),
             "s_out": np.array(0.2, np.float32), "z_out": np.array(10, np.int8)}
    proto = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    x = rng.normal(0, 3, (2, 64)).astype(np.float32)
    before = _run(proto, x)
    assert oft.activations_to_uint8(proto) == 4  # two Q and two DQ of activations; the weight's DQ stays
    zps = {n.input[2]: n for n in proto.graph.node if n.op_type != "Gemm"}
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.input[0] == "w"][0]
    assert consts[weight_dq.input[2]].dtype == np.int8
    assert {consts[z].dtype for z, n in zps.items() if n is not weight_dq} == {np.dtype(np.uint8)}
    assert consts["z_in_u8"] == 125 and consts["z_out_u8"] == 138
    onnx.checker.check_model(proto)
    np.testing.assert_allclose(_run(proto, x), before, atol=1e-6)


def test_float_io_quantizes_pixels_as_the_tflite_input_and_returns_float_probabilities():
    """uint8 pixels in, int8 probabilities out (as TFLite's int8 models) -> float pixels in, float out."""
    nodes = [helper.make_node("DequantizeLinear", ["px", "one", "zero"], ["pf"]),
             helper.make_node("Mul", ["pf", "k"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "s_p", "z_p"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s_p", "z_p"], ["pd"]),
             helper.make_node("QuantizeLinear", ["pd", "s_p", "z_p"], ["out"])]
    inits = {"one": np.array(1.0, np.float32), "zero": np.array(0, np.uint8), "k": np.array(0.02, np.float32),
             "s_p": np.array(1 / 256, np.float32), "z_p": np.array(-128, np.int8)}
    proto = _model(nodes, [helper.make_tensor_value_info("px", TensorProto.UINT8, ["n", 4])],
                   [helper.make_tensor_value_info("out", TensorProto.INT8, ["n", 4])], inits)
    oft.float_io(proto, TensorSpec("uint8", 1.0, 0))
    assert [i.name for i in proto.graph.input] == [oft.INPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].name == "p" and len(proto.graph.node) == 4  # the trailing Q/DQ/Q pruned
    pixels = np.array([[0, 17, 128, 255], [3, 3, 250, 9]], np.float32)
    logits = pixels * np.float32(0.02)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_run(proto, pixels), expected, rtol=1e-5)
