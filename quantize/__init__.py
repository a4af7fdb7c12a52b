"""llama-quantize rebuilt: ggml's block quantizers (bit-exact), llama.cpp's per-tensor type policy,
and the GGUF rewrite.

    numerics  float32 helpers that keep C's rounding and summation order
    legacy    Q4_0 Q4_1 Q5_0 Q5_1 Q8_0, F16 BF16 F32        (32-value blocks)
    search    make_qkx2_quants / make_qx_quants / make_q3_quants, vectorised over sub-blocks
    kquants   Q2_K Q3_K Q4_K Q5_K Q6_K                        (256-value super-blocks)
    blocks    ggml type -> quantizer, and decoding any input tensor to float32
    ftypes    llama-quantize's type names, numbers and descriptions
    policy    llama_tensor_get_type: which type each tensor gets
    gguf_out  output header (metadata copied byte for byte) and the atomic output file
    run       the driver: plan, thread pool over row chunks, write, summary
"""
