"""Inference service (issue 4): versioned model + trie registry, the Triton model
``leadre_retrieval`` served by PyTriton on CPU, its gRPC client and the instance launcher.
The GPU (TensorRT-LLM) deployment of the same model is in ``deploy/trtllm/``."""
