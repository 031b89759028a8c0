"""Quantisation (issue 7): calibration capture (:mod:`~unidg_rt.quant.calibration`), INT8/FP8 Q/DQ
ONNX from the captured data (:mod:`~unidg_rt.quant.qdq`, ModelOpt's ONNX PTQ or onnxruntime's
quantizer; graph analysis and post-validation in :mod:`~unidg_rt.quant.graph`), quantised
artifacts in an exported folder (:mod:`~unidg_rt.quant.artifacts`, ``unidg-rt quantize``) and
static FP8 activation scales from calibration for the torch fast path's FP8 linears
(:mod:`~unidg_rt.quant.fp8`; the linears are :mod:`unidg_rt.kernels.fp8`). The precision-vs-fp32
quality report (``unidg-rt eval --compare``) is an application: :mod:`unidg_rt.evaluation.precision_report`."""
